"""The ML virtualenv: runs the scripts in ``loradeploy/mlworkers`` with its Python.

A worker prints JSON lines on stdout: progress records while it runs
(``{"progress": {"phase", "step", "steps", "elapsed_s", "loss"}}``) and its summary as
the last line; logs go to stderr. Its exit status is 0 (ok), 2 (bad input) or 1
(failure). This client hands progress to a callback as it arrives and turns the rest
into the project's results and errors. stderr goes to a log file the error messages name.
"""

from __future__ import annotations

import json
import math
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeGuard

from loradeploy.errors import DeadlineExceededError, PermanentError, UsageError, short

WORKERS_DIR = Path(__file__).resolve().parent.parent / "mlworkers"


@dataclass(frozen=True)
class WorkerProgress:
    """Where a worker is: ``phase`` ("load", "train", "evaluate"), ``step`` of ``steps``
    done, ``elapsed_s`` since the phase started, the last training ``loss``."""

    phase: str
    step: int
    steps: int
    elapsed_s: float
    loss: float | None = None

    @property
    def remaining_s(self) -> float | None:
        """Seconds left in this phase at the pace so far; None before the first step."""
        if self.step <= 0 or self.steps <= 0:
            return None
        return self.elapsed_s / self.step * max(self.steps - self.step, 0)


Progress = Callable[[WorkerProgress], None]


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def parse_progress(line: str) -> WorkerProgress | None:
    """The progress record on one stdout line; None for any other line (the summary, or a
    malformed record: progress is informational, never a reason to fail)."""
    if not line.startswith('{"progress"'):
        return None
    try:
        record = json.loads(line)
    except ValueError:
        return None
    body = record.get("progress") if isinstance(record, dict) and len(record) == 1 else None
    if not isinstance(body, dict):
        return None
    phase, step, steps = body.get("phase"), body.get("step"), body.get("steps")
    elapsed, loss = _number(body.get("elapsed_s", 0.0)), body.get("loss")
    if not isinstance(phase, str) or not phase or elapsed is None or elapsed < 0:
        return None
    if not (_count(step) and _count(steps)):
        return None
    return WorkerProgress(phase=phase, step=step, steps=steps, elapsed_s=elapsed, loss=_number(loss))


def _count(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


class MlWorker:
    def __init__(self, python: Path, *, workers_dir: Path = WORKERS_DIR, timeout_s: float = 7200) -> None:
        self.python = python
        self.workers_dir = workers_dir
        self.timeout_s = timeout_s

    def run(
        self, script: str, args: list[str], *, log: Path, on_progress: Progress | None = None
    ) -> dict[str, Any]:
        """Run one worker to completion; its JSON summary. Progress records go to
        ``on_progress`` as they arrive."""
        if not self.python.is_file():
            raise UsageError(
                f"the ML virtualenv's Python {self.python} does not exist",
                hint="run 'make setup', or pass --ml-python",
            )
        log.parent.mkdir(parents=True, exist_ok=True)
        command = [str(self.python), str(self.workers_dir / script), *args]
        last_out = ""
        with log.open("w", encoding="utf-8") as err:
            process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=err, text=True)
            expired = threading.Event()

            def expire() -> None:
                expired.set()
                process.kill()

            deadline = threading.Timer(self.timeout_s, expire)
            deadline.daemon = True
            deadline.start()
            try:
                for line in process.stdout or ():
                    progress = parse_progress(line)
                    if progress is None:
                        last_out = line.strip() or last_out
                    elif on_progress is not None:
                        on_progress(progress)
                returncode = process.wait()
            finally:
                deadline.cancel()
                if process.poll() is None:  # the callback raised (Ctrl-C): no orphan worker
                    process.kill()
                    process.wait()
        if expired.is_set():
            raise DeadlineExceededError(
                f"{script} did not finish within {self.timeout_s:.0f}s (log {log})",
                hint="use fewer --steps, or read the log",
            )
        last = _last_line(log)
        if returncode == 2:
            raise UsageError(f"{script} refused its input: {short(last)} (log {log})")
        if returncode != 0:
            raise PermanentError(
                f"{script} failed with exit status {returncode}: {short(last)}",
                hint=f"read the log {log}",
            )
        try:
            summary = json.loads(last_out)
        except ValueError as exc:
            raise PermanentError(f"{script} printed no JSON summary (log {log})") from exc
        if not isinstance(summary, dict):
            raise PermanentError(f"{script} printed a summary that is not a JSON object (log {log})")
        return summary


def _last_line(log: Path) -> str:
    lines = [line for line in log.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"
