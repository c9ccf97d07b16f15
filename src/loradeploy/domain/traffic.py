"""Routed mode's live traffic, pure: the router's per-request records and the figures of
each versioned name over a window.

The records are written by the proxy's callback (``routerworkers/request_log.py``), one
JSON object per line. A line that is not a whole, well-formed record (torn by a crash,
written by another version, hostile) is skipped and counted, never raised: the log is
evidence to weigh, and one bad line must not blind a canary to the rest.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError, field_validator

from loradeploy.domain.canary import VersionWindow

MAX_LINE_BYTES = 4 << 20  # a longer line is skipped (prompt and answer text included)


class RequestRecord(BaseModel):
    """One finished request, as the router's callback wrote it (record version 1)."""

    model_config = ConfigDict(frozen=True, extra="ignore", strict=True)

    v: Literal[1]
    start: float  # epoch seconds
    end: float
    stable: str | None = None  # the model group called (a mirrored request: its target)
    entry: str | None = None  # the proxy entry that answered, e.g. m@v2#1
    name: str | None = None  # the versioned name, e.g. m@v2
    ok: StrictBool
    status: int | None = Field(default=None, ge=100, le=599)
    error: str | None = None
    prompt_tokens: int | None = Field(default=None, ge=0)
    completion_tokens: int | None = Field(default=None, ge=0)
    shadow: StrictBool = False  # mirrored: no client saw its answer
    key: str | None = None  # sha256 of the messages or prompt, pairs live and shadow
    prompt: str | None = None
    answer: str | None = None

    @field_validator("start", "end", mode="before")
    @classmethod
    def _seconds(cls, value: object) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ValueError("not a finite number of seconds")
        if value < 0:
            raise ValueError("before the epoch")
        return float(value)

    @property
    def latency_s(self) -> float:
        return max(0.0, self.end - self.start)


def parse_line(line: str | bytes) -> RequestRecord | None:
    """The record on one line, or None for a line that is not one."""
    if len(line) > MAX_LINE_BYTES:
        return None
    try:
        record = RequestRecord.model_validate_json(line)
    except (ValidationError, ValueError, UnicodeDecodeError):
        return None
    return record if record.end >= record.start else None


def parse_lines(lines: Iterable[str | bytes]) -> tuple[list[RequestRecord], int]:
    """The records of ``lines`` and the number of non-blank lines skipped."""
    records: list[RequestRecord] = []
    skipped = 0
    for line in lines:
        if not line.strip():
            continue
        record = parse_line(line)
        if record is None:
            skipped += 1
        else:
            records.append(record)
    return records, skipped


def windows(
    records: Iterable[RequestRecord], names: Sequence[str], start: float, end: float
) -> dict[str, VersionWindow]:
    """What each of ``names`` did in the window ``[start, end)``: latencies of its
    successful requests and the count of failed ones. A record belongs to the window its
    ``end`` falls in; mirrored (shadow) requests are left out, no client saw them."""
    result = {name: VersionWindow(name=name) for name in names}
    for record in records:
        if record.shadow or record.name not in result or not start <= record.end < end:
            continue
        window = result[record.name]
        if record.ok:
            window.latencies_s.append(record.latency_s)
        else:
            window.errors += 1
    return result


def figures(window: VersionWindow) -> dict[str, float | int | None]:
    """One version's window as plain figures (latency percentiles of successful requests,
    None when it had none)."""
    has = window.has_latencies
    return {
        "requests": window.requests,
        "errors": window.errors,
        "error_rate": round(window.error_rate, 6),
        "p50_s": round(window.p(50), 6) if has else None,
        "p95_s": round(window.p(95), 6) if has else None,
    }
