"""Drive ``fake_kubectl.py`` from tests: write its state file, read its call log.

``FakeCluster.api()`` is the real ``KubectlApi`` pointed at the fake binary, so every
test goes through ``subprocess.run``, argument lists and error translation for real.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from loradeploy.clients.kube import KubectlApi

FAKE_KUBECTL = Path(__file__).with_name("fake_kubectl.py")
NS = "ml-models"
SELECTOR = "app=vllm"
CONTAINER = "vllm"


def fake_pod(
    name: str, ip: str, *, ready: bool = True, port: int | None = 8000, **extra: Any
) -> dict[str, Any]:
    return {
        "name": name,
        "ip": ip,
        "ready": ready,
        "port": port,
        "namespace": NS,
        "labels": {"app": "vllm"},
        **extra,
    }


def fake_deployment(name: str = "vllm", *, replicas: int = 2, generation: int = 3) -> dict[str, Any]:
    """A Deployment whose last rollout finished."""
    return {
        "metadata": {"name": name, "namespace": NS, "generation": generation},
        "spec": {"replicas": replicas, "template": {"metadata": {"labels": {"app": "vllm"}}}},
        "status": {
            "observedGeneration": generation,
            "replicas": replicas,
            "updatedReplicas": replicas,
            "readyReplicas": replicas,
            "availableReplicas": replicas,
        },
    }


@dataclass
class FakeCluster:
    """The fake's state (``state``) and where it lives; ``save()`` after changing it."""

    folder: Path
    monkeypatch: pytest.MonkeyPatch
    state: dict[str, Any] = field(default_factory=lambda: {"pods": [], "deployments": {}})

    @property
    def state_file(self) -> Path:
        return self.folder / "state.json"

    @property
    def log_file(self) -> Path:
        return self.folder / "calls.jsonl"

    def save(self) -> None:
        self.state_file.write_text(json.dumps(self.state), encoding="utf-8")
        # The fake's '#!/usr/bin/env python3' finds this interpreter first, started without
        # site-packages (the fake needs only the standard library): no version-manager shim
        # and no .pth files on every call (a pyenv shim costs about half a second).
        bin_dir = self.folder / "bin"
        if not bin_dir.exists():
            bin_dir.mkdir()
            shim = bin_dir / "python3"
            shim.write_text(f'#!/bin/sh\nexec "{Path(sys.executable).resolve()}" -S "$@"\n')
            shim.chmod(0o755)
            self.monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
        self.monkeypatch.setenv("FAKE_KUBECTL_STATE", str(self.state_file))
        self.monkeypatch.setenv("FAKE_KUBECTL_LOG", str(self.log_file))

    def load(self) -> dict[str, Any]:
        """The state as the fake left it (patches and rollouts applied)."""
        data: dict[str, Any] = json.loads(self.state_file.read_text(encoding="utf-8"))
        return data

    def fail(self, verb: str, text: str) -> None:
        self.monkeypatch.setenv("FAKE_KUBECTL_FAIL", f"{verb}:{text}")

    def calls(self) -> list[list[str]]:
        if not self.log_file.exists():
            return []
        return [json.loads(line) for line in self.log_file.read_text(encoding="utf-8").splitlines()]

    def forget_calls(self) -> None:
        self.log_file.unlink(missing_ok=True)

    def api(self, **kwargs: Any) -> KubectlApi:
        self.save()
        return KubectlApi(kubectl=str(FAKE_KUBECTL), **kwargs)


def exec_argvs(calls: list[list[str]]) -> list[list[str]]:
    """The commands run inside pods, from the fake's log."""
    return [call[call.index("--") + 1 :] for call in calls if call and call[0] == "exec"]
