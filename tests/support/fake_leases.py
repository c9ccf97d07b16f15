"""An in-memory lease store for unit tests: the same contract as
``clients.mlflow_leases.MlflowLeaseStore`` (an atomic create that fails when the record
exists), with hooks to delay or fail calls.

``FakeLeaseStore`` is shared by every fake registry, so tests of steps and the
model-based test of two deployers use one implementation.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from loradeploy.coordination.lease import LeaseRecord
from loradeploy.errors import ServerUnavailableError


@dataclass
class FakeLeaseStore:
    records: dict[str, dict[int, str]] = field(default_factory=dict)
    where: str = "the fake lease store"
    # Called before every call with its name ("create", "read", "write", "remove"): a
    # test makes it sleep (a slow registry) or raise (a failing one).
    before: Callable[[str], None] | None = None
    calls: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def _enter(self, call: str) -> None:
        self.calls.append(call)
        if self.before is not None:
            self.before(call)

    def describe(self, model: str, number: int) -> str:
        return f"fake lock object {model}.{number}"

    def create(self, model: str, number: int, record: str) -> bool:
        self._enter("create")
        with self._lock:
            mine = self.records.setdefault(model, {})
            if number in mine:
                return False
            mine[number] = record
            return True

    def read(self, model: str) -> dict[int, str]:
        self._enter("read")
        with self._lock:
            return dict(self.records.get(model, {}))

    def write(self, model: str, number: int, record: str) -> None:
        self._enter("write")
        with self._lock:
            self.records.setdefault(model, {})[number] = record

    def remove(self, model: str, number: int) -> None:
        self._enter("remove")
        with self._lock:
            self.records.get(model, {}).pop(number, None)

    # -- for assertions -------------------------------------------------------------------

    def holder(self, model: str) -> LeaseRecord | None:
        """The highest record, when it is held (not released)."""
        mine = self.records.get(model, {})
        if not mine:
            return None
        record = LeaseRecord.model_validate_json(mine[max(mine)])
        return None if record.released else record

    def is_free(self, model: str) -> bool:
        return self.holder(model) is None


def slow(seconds: float) -> Callable[[str], None]:
    return lambda _call: time.sleep(seconds)


def failing(calls: set[str], times: int = 1) -> Callable[[str], None]:
    """The first ``times`` calls named in ``calls`` fail as an unreachable MLflow does."""
    left = [times]

    def hook(call: str) -> None:
        if call in calls and left[0] > 0:
            left[0] -= 1
            raise ServerUnavailableError("MLflow at http://mlflow.test is unreachable (fake)")

    return hook
