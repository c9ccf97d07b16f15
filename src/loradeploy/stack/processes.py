"""Start and stop server processes in their own sessions, so a whole tree stops at once.

vLLM's API process spawns engine and worker processes that survive a SIGKILL of the
API process; stopping the process group takes them all.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from pydantic import BaseModel

from loradeploy.errors import DeadlineExceededError


class ProcessRecord(BaseModel):
    """What we know about a server we started (``run/<name>.json``)."""

    name: str
    pid: int
    port: int
    url: str
    command: list[str]
    log: Path
    started_at: float


def free_port(preferred: int | None = None) -> int:
    """``preferred`` if it can be bound on loopback, else any free port.

    The probe sets SO_REUSEADDR, as the servers themselves do: a port whose server just
    stopped lingers in TIME_WAIT, and a restart must get it back (clients and the stack
    file keep the URL), while a port someone listens on is still refused."""
    for candidate in ([preferred] if preferred else []) + [0]:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", candidate))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    raise OSError("no free port on 127.0.0.1")


def group_alive(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


# How far the start time the kernel gives a process may be from the one its record
# holds (the record is written just after the start; boot time is known to the second).
START_TIME_SLACK_S = 30.0


def _start_time(pid: int) -> float | None:
    """When process ``pid`` started (seconds since the epoch), from /proc; None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
        ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22, starttime
        boot = next(
            int(line.split()[1])
            for line in Path("/proc/stat").read_text(encoding="ascii").splitlines()
            if line.startswith("btime ")
        )
    except (OSError, IndexError, ValueError, StopIteration):
        return None
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def runs(record: ProcessRecord) -> bool:
    """Processes of the group ``record`` started are still there. Its pid may have gone
    to another process since (records outlive a reboot): a group whose first process
    started at another time than recorded is someone else's, and never ours to stop."""
    if not group_alive(record.pid):
        return False
    if leader_alive(record.pid):
        started = _start_time(record.pid)
        return started is not None and abs(started - record.started_at) <= START_TIME_SLACK_S
    return True  # the first process exited; what is left of the group is ours


def leader_alive(pid: int) -> bool:
    """The group's first process runs (reaped if it exited). vLLM's API process can
    die at start-up while its engine process lingers; only the leader answers HTTP."""
    _reap(pid)
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
        state = stat.rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def start(
    name: str,
    command: Sequence[str],
    *,
    env: Mapping[str, str],
    log: Path,
    port: int,
    url: str,
    cwd: Path,
) -> ProcessRecord:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as handle:
        process = subprocess.Popen(
            list(command),
            stdin=subprocess.DEVNULL,
            stdout=handle,
            stderr=subprocess.STDOUT,
            env=dict(env),
            cwd=cwd,
            start_new_session=True,  # own session and process group: pgid == pid
        )
    return ProcessRecord(
        name=name,
        pid=process.pid,
        port=port,
        url=url,
        command=list(command),
        log=log,
        started_at=time.time(),
    )


def stop_group(pid: int, *, grace_s: float = 20.0) -> None:
    """SIGTERM the group, wait up to ``grace_s``, then SIGKILL what is left."""
    if not group_alive(pid):
        return
    os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        _reap(pid)
        if not group_alive(pid):
            return
        time.sleep(0.2)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 10
    while group_alive(pid) and time.monotonic() < deadline:
        _reap(pid)
        time.sleep(0.1)


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def wait_for(
    what: str,
    ready: Callable[[], bool],
    *,
    timeout_s: float,
    alive: Callable[[], bool],
    log: Path,
    on_tick: Callable[[float], None] | None = None,
) -> float:
    """Poll ``ready`` until true; fail when the deadline passes or the process died."""
    started = time.monotonic()
    while True:
        if ready():
            return time.monotonic() - started
        elapsed = time.monotonic() - started
        if not alive():
            raise DeadlineExceededError(
                f"{what} exited during start-up after {elapsed:.0f}s",
                hint=f"read its log: {log}",
            )
        if elapsed > timeout_s:
            raise DeadlineExceededError(
                f"{what} was not ready within {timeout_s:.0f}s",
                hint=f"read its log: {log}; the machine may be busy, run 'stack up' again",
            )
        if on_tick:
            on_tick(elapsed)
        time.sleep(0.5)


def save(record: ProcessRecord, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(record.model_dump_json(indent=2), encoding="utf-8")


def load(path: Path) -> ProcessRecord | None:
    try:
        return ProcessRecord.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return None
