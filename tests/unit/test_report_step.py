"""``loradeploy report``'s step against FakeReportRegistry and result.json files in a
temporary folder; and the command line stays free of the plotting library."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest

from loradeploy.clients.registry import VersionInfo
from loradeploy.errors import NotFoundError, UsageError
from loradeploy.results import StepResult
from loradeploy.steps.report import page_name, read_traffic, release_report

from .test_release_report import MODEL, gate1, gate2

# -- the step ------------------------------------------------------------------------------


class FakeReportRegistry:
    def __init__(self, aliases: Mapping[str, str], run_id: str | None = "run-7") -> None:
        self.aliases = dict(aliases)
        self.run_id = run_id

    def get_aliases(self, name: str) -> dict[str, str]:
        if name != MODEL:
            raise NotFoundError(f"model {name!r}: not found")
        return dict(self.aliases)

    def get_version(self, name: str, version: str, via: str | None = None) -> VersionInfo:
        return VersionInfo(
            model=name,
            version=version,
            aliases=[],
            tags={"loradeploy.rank": "8"},
            via=via or f"version:{version}",
            run_id=self.run_id,
        )

    def get_run_metrics(self, run_id: str) -> dict[str, float]:
        return {"eval_token_f1": 0.74}

    def get_run_params(self, run_id: str) -> dict[str, str]:
        if run_id == "gone":
            raise NotFoundError(f"run {run_id!r}: not found")
        return {"data": "data/aws-rag-qa/train.jsonl"}

    def record_action(self, **kwargs: object) -> str:
        raise AssertionError("the report writes nothing to the registry")

    def search_actions(self, *, experiment: str, filter_string: str) -> list[dict[str, object]]:
        return [
            {
                "start_time": 1_700_000_000_000,
                "tags": {"loradeploy.alias": "live"},
                "params": {"from_version": "1", "to_version": "2", "reason": "release"},
            }
        ]


def write(folder: Path, result: StepResult) -> None:
    folder.mkdir(parents=True)
    (folder / "result.json").write_text(result.model_dump_json(), encoding="utf-8")


def test_the_step_reads_this_versions_results_and_writes_the_page(tmp_path: Path) -> None:
    results = tmp_path / "out"
    write(results / "v2" / "gate1", gate1("2"))
    write(results / "v2" / "gate2", gate2("2"))
    write(results / "v3" / "gate1", gate1("3"))
    write(results / "earlier-report", StepResult(step="report", model=MODEL, version="2"))
    (results / "broken").mkdir()
    (results / "broken" / "result.json").write_text("{not json", encoding="utf-8")
    registry = FakeReportRegistry({"live": "2"})
    done = release_report(
        registry, model=MODEL, version=None, results_dirs=[results], output_dir=tmp_path / "r"
    )  # type: ignore[arg-type]
    assert done.version == "2"
    assert [Path(p).parent.name for p in done.details["step_results"]] == ["gate1", "gate2"]
    assert all("/v2/" in p for p in done.details["step_results"])
    assert any("broken" in note for note in done.details["notes"])
    page = (tmp_path / "r" / page_name(MODEL, "2")).read_text(encoding="utf-8")
    assert done.details["bytes"] == len(page.encode())
    assert "data/aws-rag-qa/train.jsonl" in page and "eval_token_f1" in page
    assert "release" in page  # the audit row's reason


def test_the_step_needs_a_version_or_a_live_alias(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no 'live' alias"):
        release_report(
            FakeReportRegistry({}), model=MODEL, version=None, results_dirs=[], output_dir=tmp_path
        )  # type: ignore[arg-type]


def test_a_missing_results_folder_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="does not exist"):
        release_report(
            FakeReportRegistry({"live": "2"}),
            model=MODEL,
            version="2",  # type: ignore[arg-type]
            results_dirs=[tmp_path / "nope"],
            output_dir=tmp_path,
        )


def test_a_missing_training_run_becomes_a_note(tmp_path: Path) -> None:
    done = release_report(
        FakeReportRegistry({}, run_id="gone"),
        model=MODEL,
        version="2",  # type: ignore[arg-type]
        results_dirs=[],
        output_dir=tmp_path,
    )
    assert any("training run gone" in note for note in done.details["notes"])


def test_the_command_line_does_not_import_the_plotting_library() -> None:
    code = "import sys, loradeploy.cli; print(json.dumps([m for m in sys.modules if 'matplotlib' in m]))"
    done = subprocess.run(
        [sys.executable, "-c", "import json; " + code], capture_output=True, text=True, check=True
    )
    assert json.loads(done.stdout) == []


def test_traffic_is_read_from_json_lines_and_a_bad_line_is_named(tmp_path: Path) -> None:
    good = tmp_path / "traffic.jsonl"
    good.write_text(
        '{"start": 1.5, "latency_s": 0.2, "ok": true}\n\n{"start": 2, "latency_s": 0.3, "ok": false}\n'
    )
    assert [(r.start, r.ok) for r in read_traffic(good)] == [(1.5, True), (2.0, False)]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"start": 1.5, "latency_s": 0.2, "ok": true}\n{"start": "soon"}\n')
    with pytest.raises(UsageError, match="line 2"):
        read_traffic(bad)
    with pytest.raises(UsageError, match=r"missing\.jsonl"):
        read_traffic(tmp_path / "missing.jsonl")


def test_the_report_command_refuses_a_bad_version_before_any_server(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from loradeploy.cli import app

    done = CliRunner().invoke(
        app, ["report", f"--model-name={MODEL}", "--version=two", f"--output-dir={tmp_path / 'r'}"]
    )
    assert done.exit_code == 2, done.output
    assert json.loads((tmp_path / "r" / "result.json").read_text())["status"] == "error"
    assert not list((tmp_path / "r").glob("*.html"))


def test_the_report_command_against_no_registry_is_transient(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from loradeploy.cli import app

    done = CliRunner().invoke(
        app,
        ["report", f"--model-name={MODEL}", "--tracking-uri=http://127.0.0.1:9", f"--output-dir={tmp_path}"],
    )
    assert done.exit_code == 75, done.output
    assert "MLflow at http://127.0.0.1:9" in done.stderr
