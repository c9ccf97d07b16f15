"""How 'stack up' starts its servers (stack/local.py), with stand-in servers: small Python
HTTP servers that answer /health after a delay, or die. Fakes of MLflow and vLLM, only
for the order of starting and waiting; the real servers are started by the integration
tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from loradeploy.errors import DeadlineExceededError
from loradeploy.stack import local, processes
from loradeploy.stack.local import LocalStack, StackConfig

# Answers /health once ``delay`` seconds have passed since it started; writes the
# moments it started and became ready to ``<stamps>/<name>.json``. While the time in
# ``<stamps>/<name>.busy`` has not come, each answer takes 2.5 s (a server busy serving).
FAKE_SERVER = """
import http.server, json, os, sys, time
name, port, delay, stamps = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
started = time.time()
if delay < 0:
    sys.exit(1)
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        busy = f"{stamps}/{name}.busy"
        if os.path.exists(busy) and time.time() < float(open(busy).read()):
            time.sleep(2.5)
        ready = time.time() - started >= delay
        if ready:
            with open(f"{stamps}/{name}.json", "w") as f:
                json.dump({"started": started, "ready": time.time()}, f)
        self.send_response(200 if ready else 503)
        self.end_headers()
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", port), Handler).serve_forever()
"""


class FakeServersStack(LocalStack):
    """The local stack with stand-in servers instead of MLflow and vLLM."""

    def __init__(self, tmp_path: Path, delays: dict[str, float]) -> None:
        assets = tmp_path / "assets"
        for env in ("mlflow", "vllm"):
            (assets / "envs" / env / "bin").mkdir(parents=True)
            (assets / "envs" / env / "bin" / "python").symlink_to(sys.executable)
        (assets / "models" / "smollm2-135m-instruct").mkdir(parents=True)
        (assets / "models" / "smollm2-135m-instruct" / "config.json").write_text("{}")
        super().__init__(StackConfig(home=tmp_path / "home", assets=assets))
        self.stamps = tmp_path / "stamps"
        self.stamps.mkdir()
        self.script = tmp_path / "fake_server.py"
        self.script.write_text(FAKE_SERVER)
        self.delays = delays

    def _fake(self, name: str) -> list[str]:
        return [sys.executable, str(self.script), name, "{port}", str(self.delays[name]), str(self.stamps)]

    def mlflow_command(self) -> list[str]:
        return self._fake("mlflow")

    def vllm_command(self, *, restore: bool = True) -> list[str]:
        return self._fake("vllm-0")

    def stamp(self, name: str) -> dict[str, float]:
        return dict(json.loads((self.stamps / f"{name}.json").read_text()))


def test_servers_start_together_rather_than_one_after_another(tmp_path: Path) -> None:
    stack = FakeServersStack(tmp_path, {"mlflow": 1.5, "vllm-0": 0.5})
    try:
        info = stack.up()
        mlflow, vllm = stack.stamp("mlflow"), stack.stamp("vllm-0")
        # vLLM was started before MLflow answered: one did not wait for the other
        assert vllm["started"] < mlflow["ready"]
        assert info.tracking_uri != info.vllm_url
        assert json.loads((stack.home / "stack.json").read_text())["vllm_url"] == info.vllm_url
    finally:
        stack.down()


def test_one_server_that_dies_at_start_stops_the_others_too(tmp_path: Path) -> None:
    stack = FakeServersStack(tmp_path, {"mlflow": 0.2, "vllm-0": -1})
    with pytest.raises(DeadlineExceededError, match=r"vllm-0 .* exited during start-up"):
        stack.up()
    record = processes.load(stack.home / "run" / "mlflow.json")
    assert record is not None
    deadline = time.monotonic() + 10
    while processes.group_alive(record.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not processes.group_alive(record.pid), "MLflow was left running after vLLM failed"
    assert not (stack.home / "stack.json").exists()


def test_a_running_server_is_kept_and_only_the_missing_one_starts(tmp_path: Path) -> None:
    stack = FakeServersStack(tmp_path, {"mlflow": 0.1, "vllm-0": 0.1})
    try:
        first = stack.up()
        mlflow_pid = processes.load(stack.home / "run" / "mlflow.json")
        stack.stop("vllm-0")
        second = stack.up()
        assert processes.load(stack.home / "run" / "mlflow.json") == mlflow_pid
        assert second.tracking_uri == first.tracking_uri
    finally:
        stack.down()


def test_a_running_server_too_busy_to_answer_at_once_is_waited_for_never_restarted(
    tmp_path: Path,
) -> None:
    """A served vLLM holds the adapters loaded at run time: restarting it because its
    health check was slow would drop them. 'stack up' waits for it instead."""
    stack = FakeServersStack(tmp_path, {"mlflow": 0.1, "vllm-0": 0.1})
    try:
        stack.up()
        before = processes.load(stack.home / "run" / "vllm-0.json")
        busy_until = time.time() + 4  # longer than the 2 s health probe
        (stack.stamps / "vllm-0.busy").write_text(str(busy_until))
        stack.up()
        assert time.time() >= busy_until, "'stack up' returned before the busy server answered"
        after = processes.load(stack.home / "run" / "vllm-0.json")
        assert before is not None and after == before, "the busy vLLM was restarted"
        assert processes.group_alive(before.pid)
    finally:
        stack.down()


def test_a_running_server_that_never_answers_is_reported_and_left_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(local, "KEPT_WAIT_S", 1.0)
    monkeypatch.setattr(local, "VLLM_START_TIMEOUT_S", 1.0)
    stack = FakeServersStack(tmp_path, {"mlflow": 0.1, "vllm-0": 0.1})
    try:
        stack.up()
        record = processes.load(stack.home / "run" / "vllm-0.json")
        assert record is not None
        os.kill(record.pid, signal.SIGSTOP)  # wedged: alive, answers nothing
        with pytest.raises(DeadlineExceededError, match="runs but did not answer") as failed:
            stack.up()
        assert "'loradeploy stack down' then 'stack up'" in (failed.value.hint or "")
        assert processes.leader_alive(record.pid) and processes.runs(record)
        assert processes.load(stack.home / "run" / "vllm-0.json") == record
    finally:
        if record is not None:
            os.kill(record.pid, signal.SIGCONT)
        stack.down()


def test_a_record_whose_pid_is_now_another_process_is_neither_kept_nor_stopped(tmp_path: Path) -> None:
    """Records outlive a reboot, and their pids go to other processes: 'up' starts the
    server afresh and 'down' leaves that other process alone."""
    stack = FakeServersStack(tmp_path, {"mlflow": 0.1, "vllm-0": 0.1})
    other = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        stale = processes.ProcessRecord(
            name="vllm-0",
            pid=other.pid,
            port=processes.free_port(),
            url="http://127.0.0.1:1",
            command=["vllm"],
            log=tmp_path / "old.log",
            started_at=time.time() - 3600,  # the pid's first owner, an hour ago
        )
        processes.save(stale, stack.home / "run" / "vllm-0.json")
        info = stack.up()
        fresh = processes.load(stack.home / "run" / "vllm-0.json")
        assert fresh is not None and fresh.pid != other.pid and info.vllm_url == fresh.url
        stack.down()
        processes.save(stale, stack.home / "run" / "vllm-0.json")
        assert "vllm-0" not in stack.down()
        assert other.poll() is None, "an unrelated process was stopped"
    finally:
        other.kill()
        other.wait()
        stack.down()


def test_what_is_left_of_a_server_whose_first_process_died_is_stopped_and_it_starts_again(
    tmp_path: Path,
) -> None:
    stack = FakeServersStack(tmp_path, {"mlflow": 0.1, "vllm-0": 0.1})
    (stack.home / "run").mkdir(parents=True)
    leftover = processes.start(  # like vLLM's engine outliving its API process
        "vllm-0",
        ["sh", "-c", "sleep 60 & exit 0"],
        env={"PATH": "/usr/bin:/bin"},
        log=tmp_path / "leftover.log",
        port=processes.free_port(),
        url="http://127.0.0.1:1",
        cwd=tmp_path,
    )
    processes.save(leftover, stack.home / "run" / "vllm-0.json")
    try:
        deadline = time.monotonic() + 10
        while processes.leader_alive(leftover.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert processes.group_alive(leftover.pid)
        stack.up()
        fresh = processes.load(stack.home / "run" / "vllm-0.json")
        assert fresh is not None and fresh.pid != leftover.pid
        assert not processes.group_alive(leftover.pid), "the leftover group was not stopped"
    finally:
        processes.stop_group(leftover.pid, grace_s=2)
        stack.down()


def test_a_router_that_cannot_be_configured_stops_the_servers_already_started(tmp_path: Path) -> None:
    stack = FakeServersStack(tmp_path, {"mlflow": 0.2, "vllm-0": 0.2})
    stack.config.router = True
    litellm = stack.config.assets / "envs" / "router" / "bin" / "litellm"
    litellm.parent.mkdir(parents=True)
    litellm.symlink_to(sys.executable)  # never started: its configuration fails first
    (stack.home / "router" / "config.yaml").mkdir(parents=True)  # unreadable as a file
    with pytest.raises(Exception):  # noqa: B017 (whatever the router client raises)
        stack.up()
    for name in ("mlflow", "vllm-0"):
        record = processes.load(stack.home / "run" / f"{name}.json")
        assert record is not None
        deadline = time.monotonic() + 10
        while processes.group_alive(record.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not processes.group_alive(record.pid), f"{name} was left running"
