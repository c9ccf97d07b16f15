"""How 'stack up' starts its servers (stack/local.py), with stand-in servers: small Python
HTTP servers that answer /health after a delay, or die. Fakes of MLflow and vLLM, only
for the order of starting and waiting; the real servers are started by the integration
tests."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from loradeploy.errors import DeadlineExceededError
from loradeploy.stack import processes
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
        (stack.stamps / "vllm-0.busy").write_text(str(time.time() + 4))  # > the 2 s probe
        stack.up()
        after = processes.load(stack.home / "run" / "vllm-0.json")
        assert before is not None and after == before, "the busy vLLM was restarted"
        assert processes.group_alive(before.pid)
    finally:
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
