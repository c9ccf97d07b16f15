"""stack/restart.py: the local stack's cold start, with fake processes and registry."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from loradeploy.clients.files import MANIFEST, LocalFolderTransport
from loradeploy.domain.policy import AdapterPolicy
from loradeploy.errors import InvalidAdapterError
from loradeploy.stack.local import Tick
from loradeploy.stack.restart import restart_local
from support.fake_registry import FakeRegistry
from support.synthetic import write_adapter

MODEL = "aws-rag-qa"
SLOTS = {"live": "aws-rag-qa-live", "staged": "aws-rag-qa-candidate"}


@dataclass
class FakeVllmProcesses:
    """Two vLLM servers that are only names; ``events`` records what was done, and what
    the adapters folder's manifest held when each server started."""

    adapters: Path
    events: list[tuple[str, str]] = field(default_factory=list)

    def vllm_names(self) -> list[str]:
        return ["vllm-0", "vllm-1"]

    def stop(self, name: str) -> None:
        self.events.append(("stop", name))

    def start_vllm(self, name: str, on_tick: Tick | None = None) -> Any:
        manifest = self.adapters / MANIFEST
        self.events.append(("start", manifest.read_text() if manifest.is_file() else "no manifest"))


@pytest.fixture
def registry(tmp_path: Path) -> FakeRegistry:
    fake = FakeRegistry(model=MODEL, aliases={"live": "1"})  # no 'staged' yet
    fake.add_version("1", write_adapter(tmp_path / "registry" / "v1"))
    return fake


def restart(tmp_path: Path, registry: FakeRegistry, policy: AdapterPolicy) -> tuple[Any, FakeVllmProcesses]:
    processes = FakeVllmProcesses(tmp_path / "adapters")
    result = restart_local(
        processes,
        model=MODEL,
        slot_for_alias=SLOTS,
        registry=registry,  # type: ignore[arg-type]
        transport=LocalFolderTransport(tmp_path / "adapters", tmp_path / "staging"),
        policy=policy,
        base_model_name="HuggingFaceTB/SmolLM2-135M-Instruct",
    )
    return result, processes


def test_stops_every_vllm_restores_then_starts_them_on_the_restored_manifest(
    tmp_path: Path, registry: FakeRegistry
) -> None:
    result, processes = restart(tmp_path, registry, AdapterPolicy())
    assert [kind for kind, _ in processes.events] == ["stop", "stop", "start", "start"]
    started_with = processes.events[2][1]
    assert "aws-rag-qa-live/aws-rag-qa-v1" in started_with
    assert result.passed
    assert [entry["version"] for entry in result.details["restored"]] == ["1"]
    assert set(result.details["skipped"]) == {"staged"}
    assert set(result.timings_s) >= {"stop", "restore", "start"}


def test_the_restore_enforces_the_policy(tmp_path: Path, registry: FakeRegistry) -> None:
    with pytest.raises(InvalidAdapterError):
        restart(tmp_path, registry, AdapterPolicy(max_adapter_bytes=1024))
    assert not (tmp_path / "adapters" / SLOTS["live"]).exists()


def test_a_failed_restore_starts_every_vllm_again_on_what_it_served_before(
    tmp_path: Path, registry: FakeRegistry
) -> None:
    """Found reading the step: a restore that failed (here, the policy refuses the file;
    the same for an unreachable registry) left every vLLM stopped. The servers come back
    on the slot folders and manifest they had, and the error still reaches the caller."""
    adapters = tmp_path / "adapters"
    adapters.mkdir()
    before = '{"aws-rag-qa-live": "aws-rag-qa-live/aws-rag-qa-v0"}'
    (adapters / MANIFEST).write_text(before)
    processes = FakeVllmProcesses(adapters)
    with pytest.raises(InvalidAdapterError):
        restart_local(
            processes,
            model=MODEL,
            slot_for_alias=SLOTS,
            registry=registry,  # type: ignore[arg-type]
            transport=LocalFolderTransport(adapters, tmp_path / "staging"),
            policy=AdapterPolicy(max_adapter_bytes=1024),
            base_model_name="HuggingFaceTB/SmolLM2-135M-Instruct",
        )
    assert processes.events == [("stop", "vllm-0"), ("stop", "vllm-1"), ("start", before), ("start", before)]
