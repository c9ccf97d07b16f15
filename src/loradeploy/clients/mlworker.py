"""The ML virtualenv: runs the scripts in ``loradeploy/mlworkers`` with its Python.

A worker prints one line of JSON on stdout (its summary) and logs on stderr; its exit
status is 0 (ok), 2 (bad input) or 1 (failure). This client turns those into the
project's results and errors. stderr goes to a log file the error messages name.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from loradeploy.errors import DeadlineExceededError, PermanentError, UsageError, short

WORKERS_DIR = Path(__file__).resolve().parent.parent / "mlworkers"


class MlWorker:
    def __init__(self, python: Path, *, workers_dir: Path = WORKERS_DIR, timeout_s: float = 7200) -> None:
        self.python = python
        self.workers_dir = workers_dir
        self.timeout_s = timeout_s

    def run(self, script: str, args: list[str], *, log: Path) -> dict[str, Any]:
        """Run one worker to completion; its JSON summary."""
        if not self.python.is_file():
            raise UsageError(
                f"the ML virtualenv's Python {self.python} does not exist",
                hint="run 'make setup', or pass --ml-python",
            )
        log.parent.mkdir(parents=True, exist_ok=True)
        command = [str(self.python), str(self.workers_dir / script), *args]
        with log.open("w", encoding="utf-8") as err:
            try:
                done = subprocess.run(
                    command,
                    stdout=subprocess.PIPE,
                    stderr=err,
                    text=True,
                    timeout=self.timeout_s,
                    check=False,
                )
            except subprocess.TimeoutExpired as exc:
                raise DeadlineExceededError(
                    f"{script} did not finish within {self.timeout_s:.0f}s (log {log})",
                    hint="use fewer --steps, or read the log",
                ) from exc
        last = _last_line(log)
        if done.returncode == 2:
            raise UsageError(f"{script} refused its input: {short(last)} (log {log})")
        if done.returncode != 0:
            raise PermanentError(
                f"{script} failed with exit status {done.returncode}: {short(last)}",
                hint=f"read the log {log}",
            )
        try:
            summary = json.loads(done.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError) as exc:
            raise PermanentError(f"{script} printed no JSON summary (log {log})") from exc
        if not isinstance(summary, dict):
            raise PermanentError(f"{script} printed a summary that is not a JSON object (log {log})")
        return summary


def _last_line(log: Path) -> str:
    lines = [line for line in log.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"
