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
from loradeploy.clients.mlworker import MlWorker, WorkerProgress, parse_progress
from loradeploy.errors import DeadlineExceededError, PermanentError, UsageError

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
@pytest.mark.parametrize(("given", "expected"), [([], 120.0), (["--request-timeout=45"], 45.0)])
def test_every_client_of_a_gate_waits_its_request_timeout(
    command: str, given: list[str], expected: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Gate 1's questions and Gate 2's load queue on the server: their clients wait
    --request-timeout (default 120 s), not the 30 s of single requests."""
    from loradeploy.clients import vllm

    seen: list[float | None] = []
    original = vllm.VllmClient.__init__

    def recording(self: vllm.VllmClient, *args: object, **kwargs: object) -> None:
        timeout = kwargs.get("timeout")
        seen.append(timeout.read if timeout is not None else None)  # type: ignore[attr-defined]
        original(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(vllm.VllmClient, "__init__", recording)
    result = invoke(
        command,
        "--model-name=aws-rag-qa",
        f"--vllm-url={NOTHING_LISTENS}",
        f"--tracking-uri={NOTHING_LISTENS}",
        f"--eval-data={EVAL}",
        *given,
    )
    assert result.exit_code == 75, result.output
    assert seen and all(read == expected for read in seen), seen


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


def test_progress_lines_reach_the_callback_in_order_and_the_summary_is_still_the_last(
    tmp_path: Path,
) -> None:
    body = (
        'print(json.dumps({"progress": {"phase": "load", "step": 0, "steps": 2, "elapsed_s": 0}}),'
        " flush=True)\n"
        "for n in (1, 2):\n"
        '    print(json.dumps({"progress": {"phase": "train", "step": n, "steps": 2, "elapsed_s": n * 1.5,'
        ' "loss": 2.0 / n}}), flush=True)\n'
        'print(json.dumps({"ok": 1}))\n'
    )
    seen: list[WorkerProgress] = []
    assert worker_script(tmp_path, body).run("w.py", [], log=tmp_path / "w.log", on_progress=seen.append) == {
        "ok": 1
    }
    assert seen == [
        WorkerProgress("load", 0, 2, 0.0),
        WorkerProgress("train", 1, 2, 1.5, loss=2.0),
        WorkerProgress("train", 2, 2, 3.0, loss=1.0),
    ]


def test_a_worker_that_prints_only_progress_printed_no_summary(tmp_path: Path) -> None:
    body = 'print(json.dumps({"progress": {"phase": "load", "step": 0, "steps": 2, "elapsed_s": 0}}))\n'
    with pytest.raises(PermanentError, match="no JSON summary"):
        worker_script(tmp_path, body).run("w.py", [], log=tmp_path / "w.log")


def test_a_worker_past_its_deadline_is_killed_and_named(tmp_path: Path) -> None:
    worker = worker_script(tmp_path, "import time\ntime.sleep(60)\n")
    worker.timeout_s = 0.5
    with pytest.raises(DeadlineExceededError, match=r"w\.py did not finish"):
        worker.run("w.py", [], log=tmp_path / "w.log")


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (
            '{"progress": {"phase": "train", "step": 3, "steps": 40, "elapsed_s": 6.0, "loss": 1.25}}',
            WorkerProgress("train", 3, 40, 6.0, loss=1.25),
        ),
        (
            '{"progress": {"phase": "evaluate", "step": 1, "steps": 16, "elapsed_s": 2}}',
            WorkerProgress("evaluate", 1, 16, 2.0),
        ),
        ('{"ok": 1}', None),  # the summary
        ('{"progress": {"phase": "train", "step": "3", "steps": 40, "elapsed_s": 1}}', None),
        ('{"progress": {"phase": "train", "step": -1, "steps": 40, "elapsed_s": 1}}', None),
        ('{"progress": {"phase": "train", "step": true, "steps": 40, "elapsed_s": 1}}', None),
        ('{"progress": {"phase": "", "step": 1, "steps": 40, "elapsed_s": 1}}', None),
        ('{"progress": {"phase": "train", "step": 1, "steps": 40, "elapsed_s": -2}}', None),
        ('{"progress": {"phase": "train", "step": 1, "steps": 40, "elapsed_s": 1}, "x": 1}', None),
        ('{"progress": [1, 2]}', None),
        ('{"progress": {"phase": "train", "step": 1', None),
        ("noise", None),
    ],
)
def test_parse_progress(line: str, expected: WorkerProgress | None) -> None:
    assert parse_progress(line) == expected


def test_a_loss_that_is_not_a_finite_number_is_dropped_not_fatal() -> None:
    parsed = parse_progress(
        '{"progress": {"phase": "train", "step": 1, "steps": 2, "elapsed_s": 1, "loss": NaN}}'
    )
    assert parsed == WorkerProgress("train", 1, 2, 1.0, loss=None)


def test_time_left_is_the_pace_so_far_times_the_steps_left() -> None:
    assert WorkerProgress("train", 4, 40, 10.0).remaining_s == pytest.approx(90.0)
    assert WorkerProgress("train", 40, 40, 100.0).remaining_s == 0.0
    assert WorkerProgress("load", 0, 40, 0.0).remaining_s is None


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


def test_train_shows_each_workers_step_loss_and_time_left(monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    from rich.console import Console

    from loradeploy.cli import registry_commands as cli

    screen = io.StringIO()
    monkeypatch.setattr(cli, "err", Console(file=screen, width=120, force_terminal=False))
    with cli._worker_progress("m (3 steps, seed 0)") as show:
        show(WorkerProgress("load", 0, 3, 0.0))
        show(WorkerProgress("train", 1, 3, 2.0, loss=1.5))
        show(WorkerProgress("train", 3, 3, 6.0, loss=0.75))
        show(WorkerProgress("load", 0, 2, 0.0))
        show(WorkerProgress("evaluate", 2, 2, 10.0))
    lines = [line for line in screen.getvalue().splitlines() if line.strip()]
    assert lines[0].startswith("m (3 steps, seed 0): training") and "3/3" in lines[0]
    assert "loss 0.750" in lines[0] and "took 6s" in lines[0]
    assert lines[1].startswith("m (3 steps, seed 0): evaluating") and "2/2" in lines[1]


def test_the_time_left_is_shown_while_a_worker_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    from rich.console import Console

    from loradeploy.cli import registry_commands as cli

    screen = io.StringIO()
    monkeypatch.setattr(cli, "err", Console(file=screen, width=120, force_terminal=False))
    with cli._worker_progress("m") as show:
        show(WorkerProgress("train", 1, 40, 3.0, loss=2.0))  # 39 steps left at 3 s each
    assert "loss 2.000, 1m 57s left" in screen.getvalue()
