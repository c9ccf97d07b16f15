"""Process-group helpers of the local stack, with real short-lived processes."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from loradeploy.errors import DeadlineExceededError
from loradeploy.stack import processes


def _start(tmp_path: Path, script: str) -> processes.ProcessRecord:
    return processes.start(
        "probe",
        ["sh", "-c", script],
        env={"PATH": "/usr/bin:/bin"},
        log=tmp_path / "probe.log",
        port=0,
        url="http://127.0.0.1:0",
        cwd=tmp_path,
    )


def test_leader_that_died_is_seen_even_when_a_child_lingers(tmp_path: Path) -> None:
    record = _start(tmp_path, "sleep 30 & exit 1")
    try:
        deadline = time.monotonic() + 10
        while processes.leader_alive(record.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not processes.leader_alive(record.pid)
        assert processes.group_alive(record.pid)  # the orphaned sleep is still in the group
    finally:
        processes.stop_group(record.pid, grace_s=2)
    assert not processes.group_alive(record.pid)


def test_running_leader_is_alive(tmp_path: Path) -> None:
    record = _start(tmp_path, "sleep 30")
    try:
        assert processes.leader_alive(record.pid)
    finally:
        processes.stop_group(record.pid, grace_s=2)


def test_wait_for_fails_fast_when_the_process_died(tmp_path: Path) -> None:
    started = time.monotonic()
    with pytest.raises(DeadlineExceededError, match="exited during start-up"):
        processes.wait_for(
            "probe",
            lambda: False,
            timeout_s=60,
            alive=lambda: time.monotonic() - started < 0.3,
            log=tmp_path / "probe.log",
        )


def test_a_restarted_server_gets_its_port_back_from_time_wait() -> None:
    """A server that just stopped leaves its port in TIME_WAIT; the restart must reuse it
    (the stack file and every client keep the URL), while a port in use is refused."""
    import socket

    from loradeploy.stack.processes import free_port

    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    assert free_port(port) != port  # someone listens on it
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = server.accept()
    accepted.close()  # the server side closes first: its end of the connection is in TIME_WAIT
    server.close()
    client.close()
    assert free_port(port) == port
