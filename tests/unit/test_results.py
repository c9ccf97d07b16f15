"""results.py: result.json and one file per output value."""

from __future__ import annotations

import json
from pathlib import Path

from loradeploy.results import Check, StepResult, Timer, write_outputs


def test_write_outputs_writes_result_json_and_value_files(tmp_path: Path) -> None:
    out = tmp_path / "out" / "nested"
    result = StepResult(
        step="load-adapter",
        model="aws-rag-qa",
        version="3",
        source="alias:candidate",
        slot="aws-rag-qa-candidate",
        checks=[Check(name="served", passed=True, detail="root=/a")],
        details={"adapter_path": "/a/aws-rag-qa-candidate/aws-rag-qa-v3"},
    )

    write_outputs(out, result, extra={"adapter_path": "/a/aws-rag-qa-candidate/aws-rag-qa-v3"})

    data = json.loads((out / "result.json").read_text(encoding="utf-8"))
    assert data["step"] == "load-adapter"
    assert data["status"] == "ok"
    assert data["version"] == "3"
    assert data["checks"] == [
        {"name": "served", "passed": True, "detail": "root=/a", "value": None, "threshold": None}
    ]
    assert data["finished_at"]
    assert (out / "status").read_text() == "ok\n"
    assert (out / "version").read_text() == "3\n"
    assert (out / "model").read_text() == "aws-rag-qa\n"
    assert (out / "slot").read_text() == "aws-rag-qa-candidate\n"
    assert (out / "source").read_text() == "alias:candidate\n"
    assert (out / "adapter_path").read_text() == "/a/aws-rag-qa-candidate/aws-rag-qa-v3\n"
    assert not list(out.glob(".*.tmp"))


def test_write_outputs_skips_values_that_are_not_set(tmp_path: Path) -> None:
    write_outputs(tmp_path, StepResult(step="smoke-test", status="error", exit_code=75, error="down"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json", "status"]
    assert (tmp_path / "status").read_text() == "error\n"
    assert json.loads((tmp_path / "result.json").read_text())["exit_code"] == 75


def test_write_outputs_replaces_earlier_outputs(tmp_path: Path) -> None:
    write_outputs(tmp_path, StepResult(step="s", version="1"))
    write_outputs(tmp_path, StepResult(step="s", version="2"))
    assert (tmp_path / "version").read_text() == "2\n"


def test_passed_needs_every_check() -> None:
    assert StepResult(step="s").passed
    assert StepResult(step="s", checks=[Check(name="a", passed=True)]).passed
    assert not StepResult(
        step="s", checks=[Check(name="a", passed=True), Check(name="b", passed=False)]
    ).passed


def test_timer_adds_up_phases() -> None:
    timings: dict[str, float] = {}
    timer = Timer(timings)
    with timer("a"):
        pass
    with timer("a"):
        pass
    with timer("b"):
        pass
    assert set(timings) == {"a", "b"}
    assert all(v >= 0 for v in timings.values())
