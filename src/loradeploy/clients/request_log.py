"""Client for the router's per-request log (``<stack home>/router/requests.jsonl``),
written by the proxy's callback: reads the records of a time range.

The file only grows while the router runs; a missing file is an empty log (no request
finished yet). Bad lines are skipped and counted (``RequestLog.skipped`` after a read),
never raised; a file that cannot be read at all is a ``PermanentError``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from loradeploy.domain.canary import LiveAnswer, VersionWindow
from loradeploy.domain.traffic import RequestRecord, parse_lines, windows
from loradeploy.errors import PermanentError


class RequestLog:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.skipped = 0  # lines of the last read that were not records

    def read(self, since: float, until: float | None = None) -> list[RequestRecord]:
        """The records whose request ended at or after ``since`` (and before ``until``),
        in file order. A last line without its newline (being written) is left out."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            self.skipped = 0
            return []
        except OSError as exc:
            raise PermanentError(
                f"request log {self.path} cannot be read: {exc.strerror or exc}",
                hint=f"check the permissions of {self.path}",
            ) from exc
        lines = data.split(b"\n")[:-1]  # the part after the last newline is not whole yet
        records, self.skipped = parse_lines(lines)
        return [r for r in records if r.end >= since and (until is None or r.end < until)]


class LogFigures:
    """A canary's live figures from the request log: per-version windows, and the answers
    clients saw (those the log kept text for)."""

    def __init__(self, log: RequestLog) -> None:
        self.log = log

    def window(self, names: Sequence[str], start: float, end: float) -> dict[str, VersionWindow]:
        return windows(self.log.read(start, end), names, start, end)

    def answers(self, names: Sequence[str], start: float, end: float) -> list[LiveAnswer]:
        wanted = set(names)
        return [
            LiveAnswer(name=r.name, prompt=r.prompt, answer=r.answer)
            for r in self.log.read(start, end)
            if r.ok and not r.shadow and r.name in wanted and r.prompt is not None and r.answer is not None
        ]
