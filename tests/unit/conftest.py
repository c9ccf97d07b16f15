"""Fixtures for the unit tests: no servers, no network, no real sleeping.

Every unit test runs without the developer's loradeploy environment: the connection
variables are removed and ``LORADEPLOY_HOME`` points to an empty folder, so a real
``.loradeploy/stack.json`` (written by ``loradeploy stack up``) is never picked up.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from loradeploy.clients.vllm import VllmClient
from support.fakes import FakeClock, FakeVllmServer
from support.synthetic import write_adapter

# In CI (CI=true) every property and model-based test draws the same examples, so a
# submission's result does not depend on luck; runs elsewhere keep exploring new ones.
settings.register_profile("ci", derandomize=True)
if os.environ.get("CI") == "true":
    settings.load_profile("ci")

SETTINGS_ENV = (
    "MLFLOW_TRACKING_URI",
    "LORADEPLOY_VLLM_URL",
    "LORADEPLOY_ADAPTERS_ROOT",
    "VLLM_API_KEY",
    "LORADEPLOY_CA_BUNDLE",
    "LORADEPLOY_MAX_LORA_RANK",
    "LORADEPLOY_ASSETS",
    "LORADEPLOY_STAGING_DIR",
    "LORADEPLOY_PROMETHEUS_URL",
)


@pytest.fixture(autouse=True)
def no_loradeploy_environment(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """An empty LORADEPLOY_HOME and none of the connection variables."""
    home = tmp_path_factory.mktemp("empty-loradeploy-home")
    monkeypatch.setenv("LORADEPLOY_HOME", str(home))
    for name in SETTINGS_ENV:
        monkeypatch.delenv(name, raising=False)
    return home


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def server(clock: FakeClock) -> FakeVllmServer:
    """An empty vLLM 0.33.0 server serving the SmolLM2 base."""
    return FakeVllmServer(clock=clock)


@pytest.fixture
def vllm(server: FakeVllmServer, clock: FakeClock) -> Iterator[VllmClient]:
    """A client talking to ``server``, with the fake clock and sleep."""
    with VllmClient(
        "http://vllm.test:8000/", transport=server.transport(), clock=clock, sleep=clock.sleep
    ) as client:
        yield client


@pytest.fixture
def adapter_dir(tmp_path: Path) -> Path:
    """A valid synthetic PEFT LoRA folder (rank 16, SmolLM2 base)."""
    return write_adapter(tmp_path / "adapter")


@pytest.fixture(scope="session")
def group_leader() -> Iterator[int]:
    """The pid of a sleeping process that leads its own process group, as the router's
    gunicorn master does ('stack up' starts servers in new sessions). The test's own
    group cannot stand in: under make or CI its leader may have exited already."""
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"], start_new_session=True)
    try:
        yield child.pid
    finally:
        child.kill()
        child.wait()
