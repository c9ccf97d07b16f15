"""The gate and train commands through typer's CliRunner: usage errors, exit 75 when no
server answers, result files; and the ML worker client against small Python scripts."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from click.testing import Result
from typer.testing import CliRunner

from loradeploy.cli import app
from loradeploy.clients.mlworker import MlWorker
from loradeploy.errors import PermanentError, UsageError

NOTHING_LISTENS = "http://127.0.0.1:9"
EVAL = Path(__file__).resolve().parents[2] / "data" / "aws-rag-qa" / "eval.jsonl"


@pytest.fixture(autouse=True)
def in_empty_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


def invoke(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


def test_help_lists_the_gates_and_train() -> None:
    result = invoke("--help")
    for command in ("quality-gate", "compare-decision", "perf-decision", "train"):
        assert command in result.stdout


@pytest.mark.parametrize("command", ["quality-gate", "compare-decision", "perf-decision", "train"])
def test_command_help(command: str) -> None:
    result = invoke(command, "--help")
    assert result.exit_code == 0, result.output
    assert "--output-dir" in result.stdout


@pytest.mark.parametrize("which", [[], ["--version=2", "--run-id=abc"]])
def test_quality_gate_needs_exactly_one_of_version_and_run_id(which: list[str]) -> None:
    result = invoke("quality-gate", "--model-name=aws-rag-qa", f"--tracking-uri={NOTHING_LISTENS}", *which)
    assert result.exit_code == 2, result.output
    assert "exactly one of --version and --run-id" in result.stderr


@pytest.mark.parametrize("command", ["compare-decision", "perf-decision"])
def test_a_gate_that_reaches_no_server_is_transient(command: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = invoke(
        command,
        "--model-name=aws-rag-qa",
        f"--vllm-url={NOTHING_LISTENS}",
        f"--tracking-uri={NOTHING_LISTENS}",
        f"--eval-data={EVAL}",
        f"--output-dir={out}",
    )
    assert result.exit_code == 75, result.output
    written = json.loads((out / "result.json").read_text())
    assert written["status"] == "error" and "unreachable" in written["error"]


def test_a_gate_with_unreadable_eval_data_is_a_usage_error() -> None:
    result = invoke("compare-decision", "--model-name=aws-rag-qa", "--eval-data=missing.jsonl")
    assert result.exit_code == 2, result.output
    assert "missing.jsonl" in result.stderr


def test_train_without_a_stack_names_the_flags_it_needs() -> None:
    result = invoke("train", "--model-name=aws-rag-qa", f"--tracking-uri={NOTHING_LISTENS}")
    assert result.exit_code == 2, result.output
    assert "--base-model-dir" in result.stderr and "--ml-python" in result.stderr


# -- the ML worker client -------------------------------------------------------------------


def worker_script(tmp_path: Path, body: str) -> MlWorker:
    (tmp_path / "w.py").write_text("import sys, json\n" + body)
    return MlWorker(Path(sys.executable), workers_dir=tmp_path)


def test_the_worker_summary_is_the_last_stdout_line(tmp_path: Path) -> None:
    worker = worker_script(
        tmp_path, 'print("noise")\nsys.stderr.write("log\\n")\nprint(json.dumps({"ok": 1}))\n'
    )
    assert worker.run("w.py", [], log=tmp_path / "w.log") == {"ok": 1}
    assert (tmp_path / "w.log").read_text() == "log\n"


def test_a_worker_that_refuses_its_input_is_a_usage_error(tmp_path: Path) -> None:
    worker = worker_script(
        tmp_path, 'sys.stderr.write("w.py: error: --data x: no such file\\n")\nsys.exit(2)\n'
    )
    with pytest.raises(UsageError, match="no such file"):
        worker.run("w.py", [], log=tmp_path / "w.log")


def test_a_failing_worker_is_permanent_and_names_its_log(tmp_path: Path) -> None:
    worker = worker_script(tmp_path, 'sys.stderr.write("boom\\n")\nsys.exit(1)\n')
    with pytest.raises(PermanentError, match="boom") as raised:
        worker.run("w.py", [], log=tmp_path / "w.log")
    assert "w.log" in raised.value.one_line()


def test_a_missing_ml_python_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="does not exist") as raised:
        MlWorker(tmp_path / "nope" / "python").run("w.py", [], log=tmp_path / "w.log")
    assert "make setup" in raised.value.one_line()
