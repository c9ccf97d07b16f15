"""The per-model lease: at most one loradeploy process changes a model at a time.

A lease is a numbered record in a :class:`LeaseStore`. The store offers one atomic
operation, ``create``: it makes record ``N`` of a model, or reports that record ``N``
exists already (MLflow: creating a registered model whose name is taken fails on the
server's unique key; Kubernetes: creating an object whose name is taken fails the same
way). Everything else follows from it:

- **Taking.** Read the records; let ``N`` be the highest. If record ``N`` is live (not
  released, not expired, its holder not known dead), refuse. Otherwise create ``N + 1``.
  Only one process can create ``N + 1``, so of all processes that saw ``N`` free exactly
  one wins. The winner reads again and keeps the lease only if ``N + 1`` is still the
  highest record (a process that saw an old ``N`` long ago and re-created a number that
  cleanup had removed finds a higher one, and backs off).
- **Holding.** The record carries an expiry. A holder renews it (a heartbeat thread, and
  :meth:`Lease.ensure_held` before every alias move) only while it is still the highest
  record, names this run, and is comfortably before its expiry; otherwise it stops with
  :class:`~loradeploy.errors.LockLostError`, having moved nothing more.
- **Taking over.** An expired lease (expiry plus a clock-skew allowance passed) or one whose
  holder is known dead (same host, same boot, same PID namespace, process gone) is free:
  taking it is the same atomic create of ``N + 1``.
- **Releasing** marks the record released; the highest record is never deleted, older
  ones are removed by the next taker.

Soundness rests on the store's atomic create, on clocks that agree within
``CLOCK_SKEW_S``, and on every registry call finishing within ``MOVE_BUDGET_S`` (each has a
timeout and bounded retries). A write that the server applies after the client gave up
on it cannot be fenced: aliases have no compare-and-set in MLflow.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from loradeploy.errors import LockHeldError, LockLostError, LoraDeployError, PermanentError

DEFAULT_LOCK_TTL_S = 300.0  # a crashed run's lease stops counting after this
HEARTBEAT_S = 60.0  # renewal interval while held
MOVE_BUDGET_S = 120.0  # longest one registry call may take (timeouts x retries): an alias
# move starts only with at least this much lease left
CLOCK_SKEW_S = 10.0  # a taker waits this long past the expiry before taking over
MAX_RECORD_CHARS = 4096


class LeaseStore(Protocol):
    """The atomic primitive behind the lock. ``where`` names the store in messages."""

    where: str

    def create(self, model: str, number: int, record: str) -> bool:
        """Create record ``number`` of ``model``; False when it exists already."""
        ...

    def read(self, model: str) -> dict[int, str]:
        """Every record of ``model``: number -> raw record text."""
        ...

    def write(self, model: str, number: int, record: str) -> None:
        """Overwrite record ``number`` (only ever the caller's own)."""
        ...

    def remove(self, model: str, number: int) -> None:
        """Delete record ``number`` (only ever one below the highest)."""
        ...

    def describe(self, model: str, number: int) -> str:
        """How a person finds the record (for example a registered model's name)."""
        ...


@dataclass(frozen=True)
class Actor:
    """Who acts: recorded in leases, alias plans and audit records.

    ``run_id`` is unique per process. ``run_key`` stays the same across the retries of
    one request (an Argo workflow's uid and step); it defaults to ``run_id``, so a run
    started by hand never mistakes another run's work for its own.
    """

    who: str  # user@host, or the workflow name
    step: str
    run_id: str
    run_key: str = ""

    @property
    def retry_key(self) -> str:
        return self.run_key or self.run_id


@dataclass(frozen=True)
class Identity:
    """Where a process runs, as far as telling whether it is still alive needs."""

    host: str
    boot_id: str
    pid_ns: str
    pid: int
    pid_start: str

    @classmethod
    def here(cls) -> Identity:
        pid = os.getpid()
        return cls(
            host=socket.gethostname(),
            boot_id=_read(Path("/proc/sys/kernel/random/boot_id")),
            pid_ns=_pid_namespace(),
            pid=pid,
            pid_start=process_start(pid),
        )


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return ""


def _pid_namespace() -> str:
    try:
        return str(Path("/proc/self/ns/pid").readlink())
    except OSError:
        return ""


def process_start(pid: int) -> str:
    """The process's start time in clock ticks since boot ('' when unknown or gone): a PID
    reused by a new process has another start time."""
    stat = _read(Path(f"/proc/{pid}/stat"))
    if not stat or ")" not in stat:
        return ""
    fields = stat.rsplit(")", 1)[1].split()
    return fields[19] if len(fields) > 19 else ""


def process_alive(pid: int, start: str) -> bool:
    """A process with this PID and start time exists (in this PID namespace)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    return not start or process_start(pid) in ("", start)


class LeaseRecord(BaseModel):
    """One lease as stored. Parsed strictly: registry content is not trusted."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    run_id: str = Field(min_length=1, max_length=128)
    run_key: str = Field(default="", max_length=256)
    holder: str = Field(max_length=256)
    step: str = Field(max_length=64)
    host: str = Field(max_length=256)
    boot_id: str = Field(default="", max_length=64)
    pid_ns: str = Field(default="", max_length=64)
    pid: int = Field(ge=0)
    pid_start: str = Field(default="", max_length=32)
    expires_at: float
    released: bool = False

    @field_validator("expires_at")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value) or value <= 0:
            raise ValueError("must be a finite time in seconds")
        return value

    def expires(self) -> str:
        return datetime.fromtimestamp(self.expires_at, UTC).isoformat(timespec="seconds")

    def dump(self) -> str:
        return self.model_dump_json()


class MalformedLeaseError(PermanentError):
    """A lease record that is not one loradeploy wrote (edited by hand, or hostile)."""


def parse_record(store: LeaseStore, model: str, number: int, raw: str) -> LeaseRecord:
    where = store.describe(model, number)
    try:
        if len(raw) > MAX_RECORD_CHARS:
            raise ValueError(f"{len(raw)} characters")
        return LeaseRecord.model_validate(json.loads(raw))
    except (ValueError, ValidationError) as exc:
        first = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise MalformedLeaseError(
            f"the lock of model {model!r} ({where}) is malformed ({first})",
            hint=f"clear it: loradeploy unlock --model-name {model} --run-id lease-{number}",
        ) from exc


def holder_is_gone(record: LeaseRecord, here: Identity, alive: Callable[[int, str], bool]) -> bool:
    """The holder ran on this very machine and PID namespace, and has exited. A record
    from another host, boot or PID namespace (a container sharing the host name) is never
    judged by a PID: only its expiry frees it."""
    return (
        bool(record.boot_id and record.pid_ns)
        and record.host == here.host
        and record.boot_id == here.boot_id
        and record.pid_ns == here.pid_ns
        and record.pid > 0
        and not alive(record.pid, record.pid_start)
    )


def is_free(record: LeaseRecord, now: float, here: Identity, alive: Callable[[int, str], bool]) -> bool:
    return record.released or now > record.expires_at + CLOCK_SKEW_S or holder_is_gone(record, here, alive)


def held_error(store: LeaseStore, model: str, number: int, record: LeaseRecord | None) -> LockHeldError:
    if record is None:
        return LockHeldError(
            f"model {model!r} is being deployed by another run (lease {number} in {store.where})",
            hint="wait for that run to finish, then retry",
        )
    return LockHeldError(
        f"model {model!r} is being deployed by {record.holder} ({record.step}, run {record.run_id}, "
        f"lock expires {record.expires()})",
        hint=(
            "wait for that run to finish, then retry; if it crashed, its lock expires by itself, "
            f"or remove it: loradeploy unlock --model-name {model} --run-id {record.run_id}"
        ),
    )


@dataclass
class Lease:
    """A held lease. ``ensure_held`` before every change that must be exclusive."""

    store: LeaseStore
    model: str
    number: int
    record: LeaseRecord
    ttl_s: float
    clock: Callable[[], float]
    release_error: str | None = None
    lost: str | None = None
    _guard: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def _lost(self, why: str) -> LockLostError:
        self.lost = self.lost or why
        return LockLostError(f"the lock of model {self.model!r} (lease {self.number}) was lost: {self.lost}")

    def renew(self) -> None:
        """Verify the lease is still ours and the highest, then push its expiry out.
        Raises LockLostError when it is not, or when it is too close to its expiry to be
        sure nobody took it over."""
        with self._guard:
            if self.lost:
                raise self._lost(self.lost)
            now = self.clock()
            if now >= self.record.expires_at - CLOCK_SKEW_S:
                raise self._lost(f"it expired at {self.record.expires()} before it was renewed")
            records = self.store.read(self.model)
            top = max(records, default=0)
            raw = records.get(self.number)
            if raw is None or top != self.number:
                raise self._lost(f"another run took it over (lease {top} in {self.store.where})")
            current = parse_record(self.store, self.model, self.number, raw)
            if current.run_id != self.record.run_id or current.released:
                raise self._lost(f"it was released or rewritten by run {current.run_id}")
            renewed = self.record.model_copy(update={"expires_at": now + self.ttl_s})
            self.store.write(self.model, self.number, renewed.dump())
            self.record = renewed

    def ensure_held(self) -> None:
        """Call immediately before an exclusive change: renews, and refuses to go on when
        less than ``MOVE_BUDGET_S`` of the lease would be left for the change itself."""
        self.renew()
        if self.clock() + MOVE_BUDGET_S > self.record.expires_at:
            raise self._lost("too little of it was left for one more change")

    def release(self) -> None:
        with self._guard:
            if self.lost:
                return
            records = self.store.read(self.model)
            if max(records, default=0) != self.number:
                return
            released = self.record.model_copy(update={"released": True})
            self.store.write(self.model, self.number, released.dump())
            self.record = released


def acquire(
    store: LeaseStore,
    model: str,
    actor: Actor,
    *,
    ttl_s: float = DEFAULT_LOCK_TTL_S,
    clock: Callable[[], float] = time.time,
    here: Identity | None = None,
    alive: Callable[[int, str], bool] = process_alive,
) -> Lease:
    """Take the model's lease or raise LockHeldError naming the holder."""
    here = here or Identity.here()
    records = store.read(model)
    top = max(records, default=0)
    if top:
        current = parse_record(store, model, top, records[top])
        if not is_free(current, clock(), here, alive):
            raise held_error(store, model, top, current)
    mine = top + 1
    record = LeaseRecord(
        run_id=actor.run_id,
        run_key=actor.retry_key,
        holder=actor.who,
        step=actor.step,
        host=here.host,
        boot_id=here.boot_id,
        pid_ns=here.pid_ns,
        pid=here.pid,
        pid_start=here.pid_start,
        expires_at=clock() + ttl_s,
    )
    if not store.create(model, mine, record.dump()):
        # Someone else made record ``mine`` first; or our own create reached the server
        # and a client retry then found it taken: read it to tell which.
        records = store.read(model)
        raw = records.get(mine)
        theirs = _parse_or_none(store, model, mine, raw)
        if theirs is None or theirs.run_id != actor.run_id:
            raise held_error(store, model, mine, theirs)
    records = store.read(model)
    top_now = max(records, default=0)
    lease = Lease(store=store, model=model, number=mine, record=record, ttl_s=ttl_s, clock=clock)
    if top_now != mine:
        # A stale number: a higher lease exists. Give ours up and name the holder.
        _quietly(lambda: store.write(model, mine, record.model_copy(update={"released": True}).dump()))
        raise held_error(store, model, top_now, _parse_or_none(store, model, top_now, records.get(top_now)))
    for old in sorted(n for n in records if n < mine):
        _quietly(lambda n=old: store.remove(model, n))  # type: ignore[misc]
    return lease


def _parse_or_none(store: LeaseStore, model: str, number: int, raw: str | None) -> LeaseRecord | None:
    if raw is None:
        return None
    try:
        return parse_record(store, model, number, raw)
    except MalformedLeaseError:
        return None


def _quietly(call: Callable[[], object]) -> None:
    """Best-effort housekeeping: a failure here leaves an older record that the next
    taker removes, and never changes who holds the lease."""
    with contextlib.suppress(LoraDeployError):
        call()


def unlock(store: LeaseStore, model: str, run_id: str) -> bool:
    """Release the lease of run ``run_id`` (a crashed run's), or a malformed lease named
    ``lease-N``; False when that run does not hold the model's lease now."""
    records = store.read(model)
    top = max(records, default=0)
    if not top:
        return False
    if run_id == f"lease-{top}":
        try:
            parse_record(store, model, top, records[top])
        except MalformedLeaseError:
            # Not one of ours to parse: a released record of our own takes its place.
            released = LeaseRecord(
                run_id=run_id,
                holder="loradeploy unlock",
                step="unlock",
                host="",
                pid=0,
                expires_at=1.0,
                released=True,
            )
            store.write(model, top, released.dump())
            return True
    record = _parse_or_none(store, model, top, records[top])
    if record is None or record.run_id != run_id or record.released:
        return False
    store.write(model, top, record.model_copy(update={"released": True}).dump())
    return True


class Heartbeat:
    """Renews a lease every ``interval_s`` in a daemon thread until stopped. A renewal that
    finds the lease lost marks it so; the next ``ensure_held`` then stops the step. A
    renewal that fails for a registry error is retried at the next beat."""

    def __init__(self, lease: Lease, interval_s: float) -> None:
        self._lease = lease
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{lease.model}", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                self._lease.renew()
            except LockLostError:
                return
            except LoraDeployError:
                continue
