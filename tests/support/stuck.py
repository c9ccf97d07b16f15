"""What a test prints about a command that outlived its deadline: where the process
is (py-spy's Python stacks, which need no handler in the process, so they show a
command still starting up too), how much CPU it got, and how loaded the machine was
(load, pressure stall figures, memory, the busiest processes). Enough to tell a stuck
command from a starved one in a CI log that cannot be re-run by hand.

Read-only: nothing here signals or changes the process.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

PROC = Path("/proc")


def _read(path: Path, limit: int = 4000) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")[:limit].strip()
    except OSError as exc:
        return f"(unreadable: {exc.strerror})"


def _run(command: list[str], timeout_s: float = 30.0) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"({command[0]} failed: {exc})"
    return (done.stdout + done.stderr).strip()


def cpu_seconds(pid: int) -> float | None:
    """User plus system CPU seconds the process has used, from /proc/PID/stat."""
    stat = _read(PROC / str(pid) / "stat")
    try:
        fields = stat.rsplit(")", 1)[1].split()
        ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    except (IndexError, ValueError):
        return None
    return ticks / os.sysconf("SC_CLK_TCK")


def _status_lines(pid: int) -> str:
    wanted = ("State:", "Threads:", "VmRSS:", "voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:")
    status = _read(PROC / str(pid) / "status")
    return " | ".join(line.strip() for line in status.splitlines() if line.startswith(wanted))


def _py_spy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


def describe_machine() -> str:
    """Load, pressure, memory and CPU limits of this machine, and its busiest processes."""
    pressure = "; ".join(
        f"{kind}: {_read(PROC / 'pressure' / kind).splitlines()[0]}"
        for kind in ("cpu", "memory", "io")
        if (PROC / "pressure" / kind).exists()
    )
    meminfo = {
        line.split(":")[0]: line.split(":")[1].strip()
        for line in _read(PROC / "meminfo").splitlines()
        if line.startswith(("MemTotal", "MemAvailable", "SwapTotal", "SwapFree"))
    }
    limits = "; ".join(
        f"{path}: {_read(Path(path), 200)}"
        for path in (
            "/sys/fs/cgroup/cpu.max",
            "/sys/fs/cgroup/cpu/cpu.cfs_quota_us",
            "/sys/fs/cgroup/memory.max",
            "/sys/fs/cgroup/memory/memory.limit_in_bytes",
            "/sys/fs/cgroup/memory/memory.usage_in_bytes",
        )
        if Path(path).exists()
    )
    busiest = _run(["ps", "-eo", "pid,ppid,stat,pcpu,rss,nlwp,etimes,args", "--sort=-pcpu", "--cols=160"])
    return "\n".join(
        [
            f"cpus: os.cpu_count()={os.cpu_count()}, affinity={sorted(os.sched_getaffinity(0))}",
            f"load: {_read(PROC / 'loadavg')}",
            f"pressure: {pressure}",
            f"memory: {meminfo}",
            f"cgroup limits: {limits or '-'}",
            "busiest processes:",
            *busiest.splitlines()[:16],
        ]
    )


def describe_stuck(pid: int) -> str:
    """Everything above for one running process, as text for a test failure."""
    used = cpu_seconds(pid)
    spy = _py_spy()
    stacks = _run([spy, "dump", "--pid", str(pid)]) if spy else "(py-spy not installed)"
    return "\n".join(
        [
            f"process {pid}: {_status_lines(pid)}",
            f"  cpu used: {used if used is None else round(used, 2)} s;"
            f" waits in: {_read(PROC / str(pid) / 'wchan', 200)}",
            "  python stacks (py-spy dump):",
            *(f"    {line}" for line in stacks.splitlines()[:120]),
            describe_machine(),
        ]
    )
