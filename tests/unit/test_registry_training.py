"""MLflowHelper's training-run methods against a FakeMlflowClient: batching within
MLflow's limits, metrics read back, versions found by run."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest

from loradeploy.clients.registry import MLflowHelper


@dataclass
class FakeMlflowClient:
    batches: list[tuple[int, int]] = field(default_factory=list)  # (metrics, params) per call
    metrics: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    texts: dict[str, str] = field(default_factory=dict)
    status: str = "RUNNING"

    def get_experiment_by_name(self, name: str) -> None:
        return None

    def create_experiment(self, name: str) -> str:
        return "7"

    def create_run(self, experiment_id: str, run_name: str, tags: dict[str, str]) -> Any:
        return SimpleNamespace(info=SimpleNamespace(run_id="run-1", start_time=1000))

    def log_batch(self, run_id: str, metrics: Any = (), params: Any = ()) -> None:
        assert len(metrics) <= 1000 and len(params) <= 100 and len(metrics) + len(params) <= 1000
        self.batches.append((len(metrics), len(params)))
        for m in metrics:
            self.metrics.setdefault(m.key, []).append((m.step, m.value))

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        self.texts[artifact_file] = text

    def set_terminated(self, run_id: str, status: str) -> None:
        self.status = status

    def get_run(self, run_id: str) -> Any:
        latest = {key: values[-1][1] for key, values in self.metrics.items()}
        return SimpleNamespace(data=SimpleNamespace(metrics=latest))

    def search_model_versions(self, filter_string: str) -> list[Any]:
        assert "run_id = 'run-1'" in filter_string
        return [SimpleNamespace(version="10"), SimpleNamespace(version="9")]


@pytest.fixture
def helper(monkeypatch: pytest.MonkeyPatch) -> tuple[MLflowHelper, FakeMlflowClient]:
    for name in (
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
        "MLFLOW_HTTP_REQUEST_TIMEOUT",
    ):
        monkeypatch.setenv(name, "x")  # MLflowHelper overwrites them; monkeypatch puts them back
    fake = FakeMlflowClient()
    return MLflowHelper("http://mlflow.test:5000", client=fake), fake  # type: ignore[arg-type]


def test_a_long_curve_and_many_params_are_logged_in_batches(
    helper: tuple[MLflowHelper, FakeMlflowClient],
) -> None:
    registry, fake = helper
    run_id = registry.log_training_run(
        experiment="loradeploy-training",
        run_name="r",
        params={f"p{i}": str(i) for i in range(150)},
        metrics={"eval_token_f1": 0.7},
        curves={"train_loss": [float(i) for i in range(2000)]},
        tags={},
        texts={"eval_predictions.json": "[]"},
    )
    assert run_id == "run-1" and fake.status == "FINISHED"
    assert sum(m for m, _ in fake.batches) == 2001 and sum(p for _, p in fake.batches) == 150
    assert [step for step, _ in fake.metrics["train_loss"]] == list(range(1, 2001))
    assert fake.texts == {"eval_predictions.json": "[]"}
    assert registry.get_run_metrics("run-1") == {"eval_token_f1": 0.7, "train_loss": 1999.0}


def test_versions_of_a_run_are_sorted_numerically(helper: tuple[MLflowHelper, FakeMlflowClient]) -> None:
    registry, _ = helper
    assert registry.versions_of_run("aws-rag-qa", "run-1") == ["9", "10"]
