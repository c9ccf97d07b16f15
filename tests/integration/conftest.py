"""Integration tests: the real MLflow and vLLM servers, started once per session.

The stack runs in a temporary home (its own ports, database and adapters folder) and
reuses the virtualenvs, base model and demo adapters that ``make setup`` built in
``.loradeploy/``. Commands run through the real ``loradeploy`` console script, as a
user would run them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from loradeploy.settings import StackInfo
from loradeploy.stack.local import LocalStack, StackConfig
from support.stuck import describe_stuck

REPO = Path(__file__).resolve().parents[2]
ASSETS = REPO / ".loradeploy"
DEMO_ADAPTERS = ASSETS / "adapters-src"
PROBES = REPO / "data" / "aws-rag-qa" / "probes.jsonl"
LORADEPLOY = str(Path(sys.executable).parent / "loradeploy")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        item.add_marker(pytest.mark.integration)


def run_or_dump(
    command: list[str], *, env: dict[str, str], cwd: Path, timeout_s: float
) -> subprocess.CompletedProcess[str]:
    """Run a CLI command. One that outlives ``timeout_s`` is described first (its Python
    stacks by py-spy, its CPU use, the machine's load: ``support.stuck``), then asked for
    every thread's stack (SIGUSR1, see ``cli.main``) and killed; the test fails showing
    all of it."""
    process = subprocess.Popen(
        command, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        described = describe_stuck(process.pid)
        process.send_signal(signal.SIGUSR1)
        time.sleep(2)
        process.kill()
        stdout, stderr = process.communicate()
        stacks = f"{stderr[-12000:]}\n{stdout[-2000:]}"
        pytest.fail(
            f"{command[1:3]} still running after {timeout_s:.0f} s (exit {process.returncode} after"
            f" SIGUSR1: -10 means it had not reached cli.main)\n{described}\nits own dump:\n{stacks}"
        )
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


@dataclass
class Outcome:
    code: int
    stdout: str
    stderr: str
    result: dict[str, object] | None

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.startswith("error:")]


@dataclass
class Stack:
    info: StackInfo
    home: Path
    env: dict[str, str]

    def run(
        self,
        *args: str,
        output_dir: Path | None = None,
        env: dict[str, str] | None = None,
        timeout_s: float = 300,
    ) -> Outcome:
        command = [LORADEPLOY, *args]
        if output_dir is not None:
            command.append(f"--output-dir={output_dir}")
        done = run_or_dump(command, env={**self.env, **(env or {})}, cwd=self.home, timeout_s=timeout_s)
        result = None
        if output_dir is not None and (output_dir / "result.json").exists():
            result = json.loads((output_dir / "result.json").read_text())
        return Outcome(done.returncode, done.stdout, done.stderr, result)

    def up_router(self) -> Outcome:
        """'stack up --router' as a user runs it. If it fails, the test fails with the
        router's own log too (a CI run shows the failure, not the stack's files)."""
        up = self.run("stack", "up", "--router")
        if up.code != 0:
            log = self.home / "logs" / "router.log"
            tail = log.read_text(encoding="utf-8", errors="replace")[-3000:] if log.exists() else "(none)"
            pytest.fail(f"stack up --router exited {up.code}: {up.stderr.strip()}\nrouter log, end:\n{tail}")
        return up

    def register(self, model: str, adapter: str, out: Path) -> str:
        """Register a demo adapter (reusing an identical version); its version."""
        done = self.run(
            "register",
            f"--model-name={model}",
            f"--adapter-dir={DEMO_ADAPTERS / adapter}",
            "--reuse-identical",
            output_dir=out,
        )
        assert done.code == 0, done.stderr
        assert done.result is not None
        return str(done.result["version"])

    def aliases(self, model: str) -> dict[str, str]:
        """Read aliases straight from the MLflow REST API (not through loradeploy)."""
        response = httpx.get(
            f"{self.info.tracking_uri}/api/2.0/mlflow/registered-models/get",
            params={"name": model},
            timeout=10,
        )
        if response.status_code == 404:
            return {}
        response.raise_for_status()
        entries = response.json()["registered_model"].get("aliases", [])
        return {entry["alias"]: entry["version"] for entry in entries}

    def versions(self, model: str) -> list[str]:
        response = httpx.get(
            f"{self.info.tracking_uri}/api/2.0/mlflow/model-versions/search",
            params={"filter": f"name='{model}'"},
            timeout=10,
        )
        response.raise_for_status()
        return sorted(v["version"] for v in response.json().get("model_versions", []))

    def served(self, url: str | None = None) -> dict[str, str]:
        """Adapter name -> root, straight from vLLM's /v1/models."""
        response = httpx.get(f"{url or self.info.vllm_url}/v1/models", timeout=10)
        response.raise_for_status()
        return {c["id"]: c["root"] for c in response.json()["data"] if c.get("parent")}

    def snapshot(self, model: str) -> tuple[dict[str, str], list[str], dict[str, str]]:
        return self.aliases(model), self.versions(model), self.served()

    # -- the deployment lock, read and written straight through the MLflow REST API ------

    def lock_records(self, model: str) -> dict[int, dict[str, object]]:
        """Lease number -> record of ``model`` (``clients/mlflow_leases.py``'s objects)."""
        prefix = f"loradeploy-lock.{model}."
        response = httpx.get(
            f"{self.info.tracking_uri}/api/2.0/mlflow/registered-models/search",
            params={"filter": f"name LIKE '{prefix}%'", "max_results": 1000},
            timeout=10,
        )
        response.raise_for_status()
        found = {}
        for entry in response.json().get("registered_models", []):
            tags = {t["key"]: t["value"] for t in entry.get("tags", [])}
            found[int(entry["name"][len(prefix) :])] = json.loads(tags.get("loradeploy.lease", "{}") or "{}")
        return found

    def lock_holder(self, model: str) -> dict[str, object] | None:
        """The record of whoever holds ``model`` now (None: free)."""
        records = self.lock_records(model)
        if not records:
            return None
        top = records[max(records)]
        return None if top.get("released") else top

    def hold_lock(self, model: str, record: dict[str, object]) -> int:
        """Make ``record`` the model's newest lease, as another deployer would; its number."""
        number = max(self.lock_records(model), default=0) + 1
        response = httpx.post(
            f"{self.info.tracking_uri}/api/2.0/mlflow/registered-models/create",
            json={
                "name": f"loradeploy-lock.{model}.{number:06d}",
                "tags": [{"key": "loradeploy.lease", "value": json.dumps(record)}],
            },
            timeout=10,
        )
        response.raise_for_status()
        return number

    def set_lock_record(self, model: str, number: int, record: dict[str, object]) -> None:
        response = httpx.post(
            f"{self.info.tracking_uri}/api/2.0/mlflow/registered-models/set-tag",
            json={
                "name": f"loradeploy-lock.{model}.{number:06d}",
                "key": "loradeploy.lease",
                "value": json.dumps(record),
            },
            timeout=10,
        )
        response.raise_for_status()


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    missing = [p for p in (ASSETS / "envs" / "vllm", DEMO_ADAPTERS / "aws-rag-qa-v1") if not p.exists()]
    if missing:
        pytest.fail(f"the local stack is not built ({missing[0]} missing): run 'make setup'")
    home = tmp_path_factory.mktemp("stack")
    local = LocalStack(StackConfig(home=home, assets=ASSETS))
    info = local.up()
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("MLFLOW_", "LORADEPLOY_", "VLLM_"))
    }
    env["LORADEPLOY_HOME"] = str(home)
    try:
        yield Stack(info=info, home=home, env=env)
    finally:
        local.down()


@pytest.fixture(scope="session")
def closed_port_url() -> str:
    """A loopback URL where nothing listens."""
    from loradeploy.stack.processes import free_port

    return f"http://127.0.0.1:{free_port()}"
