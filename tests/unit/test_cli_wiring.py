"""What commands build from their settings (``clients.wiring``), seen through the CLI.

- The adapter policy (rank, size cap, base model aliases, trust) reaches every command
  that places adapters: here init-load-adapters, which once ignored
  ``LORADEPLOY_MAX_ADAPTER_BYTES`` because each command copied the bundle by hand.
- Replica discovery is one function: status and set-staged-alias address every replica
  of the local stack, as load-adapter does.

The registry and the vLLM servers are fakes (``support.fake_registry``,
``FakeVllmServer``); nothing leaves the test.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from loradeploy import cli
from loradeploy.clients import wiring
from loradeploy.clients.vllm import VllmClient
from loradeploy.errors import ExitCode
from support.fake_registry import FakeRegistry
from support.fakes import FakeVllmServer
from support.synthetic import write_adapter

MODEL = "aws-rag-qa"


@pytest.fixture
def registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeRegistry:
    """'live' names version 1, an adapter of a few kilobytes."""
    fake = FakeRegistry(model=MODEL, aliases={"live": "1"})
    fake.add_version("1", write_adapter(tmp_path / "registry" / "v1"))
    monkeypatch.setattr(wiring, "registry_client", lambda settings: fake)
    return fake


def init_load(tmp_path: Path) -> list[str]:
    return [
        "init-load-adapters",
        f"--model-name={MODEL}",
        f"--adapters-root={tmp_path / 'adapters'}",
        "--tracking-uri=http://mlflow.test:5000",
    ]


def adapter_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.iterdir())


def test_init_load_adapters_honours_the_size_cap_from_the_environment(
    registry: FakeRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    size = adapter_bytes(registry.versions["1"])
    monkeypatch.setenv("LORADEPLOY_STAGING_DIR", str(tmp_path / "staging"))
    monkeypatch.setenv("LORADEPLOY_MAX_ADAPTER_BYTES", str(size - 1))
    refused = CliRunner().invoke(cli.app, init_load(tmp_path))
    assert refused.exit_code == int(ExitCode.PERMANENT), refused.output
    assert f"{size - 1}" in refused.stderr
    assert not (tmp_path / "adapters" / "aws-rag-qa-live").exists()  # nothing placed
    monkeypatch.setenv("LORADEPLOY_MAX_ADAPTER_BYTES", str(size))  # exactly at the cap is fine
    done = CliRunner().invoke(cli.app, init_load(tmp_path))
    assert done.exit_code == 0, done.output
    assert (tmp_path / "adapters" / "aws-rag-qa-live" / "aws-rag-qa-v1").is_dir()


STACK_URLS = ["http://127.0.0.1:8101", "http://127.0.0.1:8102"]


@pytest.fixture
def stack_replicas(
    registry: FakeRegistry, tmp_path: Path, no_loradeploy_environment: Path, monkeypatch: pytest.MonkeyPatch
) -> dict[str, FakeVllmServer]:
    """A local stack file with two vLLM replicas, each an in-memory server."""
    stack = {
        "home": str(no_loradeploy_environment),
        "tracking_uri": "http://mlflow.test:5000",
        "vllm_url": STACK_URLS[0],
        "vllm_urls": STACK_URLS,
        "adapters_root": str(tmp_path / "adapters"),
        "served_model": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "max_lora_rank": 16,
    }
    (no_loradeploy_environment / "stack.json").write_text(json.dumps(stack))
    servers = {url: FakeVllmServer() for url in STACK_URLS}

    @contextmanager
    def fake_vllm(settings: Any, url: str | None = None) -> Iterator[VllmClient]:
        assert url in servers, f"addressed {url}, not a replica of the stack"
        with VllmClient(url, transport=servers[url].transport()) as client:
            yield client

    monkeypatch.setattr(wiring, "vllm_client", fake_vllm)
    return servers


def test_status_asks_every_replica_of_the_stack(
    stack_replicas: dict[str, FakeVllmServer], tmp_path: Path
) -> None:
    out = tmp_path / "status"
    done = CliRunner().invoke(cli.app, ["status", f"--model-name={MODEL}", f"--output-dir={out}"])
    assert done.exit_code in (0, int(ExitCode.CHECK_FAILED)), done.output
    checks = " ".join(check["name"] for check in json.loads((out / "result.json").read_text())["checks"])
    for url, server in stack_replicas.items():
        assert url in checks and server.calls, url


def test_set_staged_alias_checks_every_replica_of_the_stack(
    stack_replicas: dict[str, FakeVllmServer], registry: FakeRegistry
) -> None:
    slot = "aws-rag-qa-candidate"
    stack_replicas[STACK_URLS[0]].adapters = {slot: "/adapters/aws-rag-qa-candidate/aws-rag-qa-v1"}
    done = CliRunner().invoke(
        cli.app, ["set-staged-alias", f"--model-name={MODEL}", "--source=version:1", f"--slot-name={slot}"]
    )
    assert done.exit_code == int(ExitCode.PERMANENT), done.output  # the second replica does not serve it
    assert STACK_URLS[1] in done.stderr
    assert "staged" not in registry.aliases
    assert all(server.calls for server in stack_replicas.values())


@pytest.mark.parametrize(
    ("command", "module", "function"),
    [
        ("load-adapter", "loradeploy.steps.load_adapter", "load_adapter"),
        ("promote-adapter", "loradeploy.steps.promote", "promote_adapter"),
        ("reconcile", "loradeploy.steps.reconcile", "reconcile"),
    ],
)
def test_every_command_that_swaps_waits_the_patience_of_its_settings(
    stack_replicas: dict[str, FakeVllmServer],
    monkeypatch: pytest.MonkeyPatch,
    command: str,
    module: str,
    function: str,
) -> None:
    """LORADEPLOY_SWAP_WATCH_S and LORADEPLOY_SWAP_RESTORE_S reach the request of each
    step that swaps (the step itself is replaced by a recorder here)."""
    import importlib

    from loradeploy.results import StepResult

    seen: list[Any] = []

    def recorder(request: Any, **_: Any) -> StepResult:
        seen.append(request.patience)
        return StepResult(step=command, model=MODEL)

    monkeypatch.setattr(importlib.import_module(module), function, recorder)
    monkeypatch.setenv("LORADEPLOY_SWAP_WATCH_S", "4")
    monkeypatch.setenv("LORADEPLOY_SWAP_RESTORE_S", "7")
    args = {
        "load-adapter": ["--source=alias:live", "--slot-name=aws-rag-qa-candidate"],
        "promote-adapter": ["--source-alias=staged"],
        "reconcile": [],
    }[command]
    done = CliRunner().invoke(cli.app, [command, f"--model-name={MODEL}", *args])
    assert done.exit_code == 0, done.output
    [patience] = seen
    assert (patience.unknown_load_s, patience.restore_s) == (4.0, 7.0)


def test_status_json_shows_routed_versions_residency_and_live_figures(
    stack_replicas: dict[str, FakeVllmServer], no_loradeploy_environment: Path, tmp_path: Path
) -> None:
    """With the stack's router: the routes to the model's versions, which replica serves
    each versioned name, and each version's figures from the router's request log."""
    import time

    import yaml

    from loradeploy.domain.routes import litellm_config

    home = no_loradeploy_environment
    stack = json.loads((home / "stack.json").read_text())
    router = home / "router"
    router.mkdir()
    (router / "master.key").write_text("sk-test\n")
    routes = {"aws-rag-qa-live": {"aws-rag-qa@v1": 90, "aws-rag-qa@v2": 10}}
    (router / "config.yaml").write_text(yaml.safe_dump(litellm_config(routes, STACK_URLS)))
    now = time.time()

    def line(name: str, ok: bool, took: float, ago: float = 5.0) -> str:
        end = now - ago
        return json.dumps(
            {
                "v": 1,
                "start": end - took,
                "end": end,
                "stable": "aws-rag-qa-live",
                "entry": name,
                "name": name,
                "ok": ok,
                "status": 200 if ok else 500,
                "shadow": False,
            }
        )

    lines = [
        line("aws-rag-qa@v1", True, 0.2),
        line("aws-rag-qa@v1", True, 0.4),
        line("aws-rag-qa@v2", False, 0.1),
        line("aws-rag-qa@v2", True, 1.0, ago=1000.0),
        "torn {",
    ]  # one outside the window
    (router / "requests.jsonl").write_text("\n".join(lines) + "\n")
    stack.update(
        router_url="http://127.0.0.1:4000",
        router_config=str(router / "config.yaml"),
        router_key_file=str(router / "master.key"),
        router_record=str(home / "run" / "router.json"),
        router_log=str(router / "requests.jsonl"),
    )
    (home / "stack.json").write_text(json.dumps(stack))
    stack_replicas[STACK_URLS[0]].adapters = {"aws-rag-qa@v1": "/a/v1", "aws-rag-qa@v2": "/a/v2"}
    stack_replicas[STACK_URLS[1]].adapters = {"aws-rag-qa@v1": "/a/v1", "other@v3": "/o/v3"}
    done = CliRunner().invoke(cli.app, ["status", f"--model-name={MODEL}", "--json", "--window=60"])
    result = json.loads(done.stdout)
    routed = result["details"]["routed"]
    assert routed["routes"] == routes
    assert routed["window"]["skipped_lines"] == 1
    assert routed["versions"]["aws-rag-qa@v1"] == {
        "served_on": STACK_URLS,
        "requests": 2,
        "errors": 0,
        "error_rate": 0.0,
        "p50_s": pytest.approx(0.3),
        "p95_s": pytest.approx(0.39),
    }
    assert routed["versions"]["aws-rag-qa@v2"] == {
        "served_on": [STACK_URLS[0]],
        "requests": 1,
        "errors": 1,
        "error_rate": 1.0,
        "p50_s": None,
        "p95_s": None,
    }
    assert set(routed["versions"]) == {"aws-rag-qa@v1", "aws-rag-qa@v2"}  # other models' names left out
