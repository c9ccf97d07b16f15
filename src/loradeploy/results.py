"""Step results: ``result.json`` plus one small file per value an Argo step passes on."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class Check(BaseModel):
    """One check a step ran: what, whether it passed, and the figures behind it."""

    name: str
    passed: bool
    detail: str = ""
    value: float | None = None
    threshold: float | None = None


class StepResult(BaseModel):
    step: str
    status: Literal["ok", "failed", "error"] = "ok"
    exit_code: int = 0
    model: str | None = None
    version: str | None = None
    source: str | None = None
    slot: str | None = None
    started_at: str = Field(default_factory=now_iso)
    finished_at: str | None = None
    timings_s: dict[str, float] = Field(default_factory=dict)
    checks: list[Check] = Field(default_factory=list)
    details: dict[str, Any] = Field(default_factory=dict)
    error: str | None = None

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks)

    def outputs(self) -> dict[str, str]:
        """Values a later workflow step reads, one file each."""
        values: dict[str, str] = {"status": self.status}
        for key in ("model", "version", "slot", "source"):
            value = getattr(self, key)
            if value is not None:
                values[key] = str(value)
        return values


class Timer:
    """Collects named phase durations into a dict, in seconds."""

    def __init__(self, into: dict[str, float]) -> None:
        self._into = into

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self._into[phase] = round(self._into.get(phase, 0.0) + time.perf_counter() - started, 4)


def write_outputs(output_dir: Path, result: StepResult, extra: Mapping[str, str] = {}) -> None:
    """Write ``result.json`` and the per-value files (``version``, ``status``, ...)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    result.finished_at = result.finished_at or now_iso()
    payload = json.dumps(result.model_dump(mode="json"), indent=2, sort_keys=False) + "\n"
    _atomic_write(output_dir / "result.json", payload)
    for key, value in {**result.outputs(), **extra}.items():
        _atomic_write(output_dir / key, value + "\n")


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
