"""The quality gate and ``loradeploy train`` against FakeGateRegistry and a fake ML worker
(no torch: the fake writes a synthetic adapter and canned evaluation answers)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from loradeploy.clients.mlworker import Progress, WorkerProgress
from loradeploy.coordination import Actor
from loradeploy.domain.gates import METRIC_EXACT, METRIC_F1, METRIC_LOSS
from loradeploy.domain.smoke import PROBES_FILE, PROBES_TAG, parse_probes, probes_digest
from loradeploy.errors import NotFoundError, PermanentError, UsageError
from loradeploy.steps.quality_gate import quality_gate
from loradeploy.steps.train import TrainRequest, train, training_cache
from support.fake_gate_registry import FakeGateRegistry
from support.synthetic import write_adapter

MODEL = "aws-rag-qa"
ACTOR = Actor(who="test@host", step="test", run_id="run-x")


# -- quality gate ---------------------------------------------------------------------------


@pytest.fixture
def trained() -> FakeGateRegistry:
    return FakeGateRegistry(
        MODEL,
        aliases={"live": "1", "candidate": "1"},
        version_runs={"1": None, "2": "good-run", "3": "bad-run"},
        run_metrics={
            "good-run": {METRIC_F1: 0.72, METRIC_LOSS: 0.6},
            "bad-run": {METRIC_F1: 0.11, METRIC_LOSS: 1.6},
        },
    )


def gate(registry: FakeGateRegistry, **kwargs: Any) -> Any:
    args = {"version": None, "run_id": None, "min_f1": 0.5, "max_eval_loss": 1.0, **kwargs}
    return quality_gate(registry, model=MODEL, actor=ACTOR, **args)  # type: ignore[arg-type]


def test_a_passing_version_becomes_candidate(trained: FakeGateRegistry) -> None:
    result = gate(trained, version="2")
    assert result.passed and result.details["run_id"] == "good-run"
    assert trained.aliases == {"live": "1", "candidate": "2"}
    assert [a["loradeploy.alias"] for a in trained.audit] == ["candidate"]


def test_a_run_id_names_its_version(trained: FakeGateRegistry) -> None:
    assert gate(trained, run_id="good-run").version == "2"
    assert trained.aliases["candidate"] == "2"


def test_a_failing_version_leaves_the_aliases_alone(trained: FakeGateRegistry) -> None:
    result = gate(trained, version="3")
    assert {c.name for c in result.checks if not c.passed} == {METRIC_F1, METRIC_LOSS}
    assert trained.aliases == {"live": "1", "candidate": "1"} and trained.audit == []


def test_a_version_without_a_training_run_is_permanent(trained: FakeGateRegistry) -> None:
    with pytest.raises(PermanentError, match="no training run"):
        gate(trained, version="1")


def test_a_run_without_a_version_is_not_found(trained: FakeGateRegistry) -> None:
    with pytest.raises(NotFoundError, match="no version registered from run"):
        gate(trained, run_id="nope")


# -- train -----------------------------------------------------------------------------------


class FakeMlWorker:
    """Stands in for the ML virtualenv: records calls, writes what the real scripts write."""

    def __init__(self, workers_dir: Path, answers: dict[str, str]) -> None:
        self.workers_dir = workers_dir
        self.answers = answers
        self.calls: list[str] = []

    def run(
        self, script: str, args: list[str], *, log: Path, on_progress: Progress | None = None
    ) -> dict[str, Any]:
        self.calls.append(script)
        flags = dict(zip(args[::2], args[1::2], strict=True))
        if on_progress is not None:
            on_progress(WorkerProgress(phase=script, step=1, steps=1, elapsed_s=0.5))
        if script == "train_lora.py":
            write_adapter(Path(flags["--out"]))
            steps = int(flags["--steps"])
            return {
                "steps": steps,
                "seed": int(flags["--seed"]),
                "rank": 16,
                "targets": ["q_proj"],
                "final_loss": 0.5,
                "loss_curve": [2.0 - i * 0.1 for i in range(steps)],
                "train_seconds": 1.5,
            }
        rows = [json.loads(line) for line in Path(flags["--data"]).read_text().splitlines()]
        predictions = [
            {"id": r["id"], "reference": r["answer"], "prediction": self.answers.get(r["id"], "")}
            for r in rows
        ]
        return {"eval_loss": 0.75, "predictions": predictions, "seconds": 2.0}


@pytest.fixture
def request_(tmp_path: Path) -> TrainRequest:
    data = tmp_path / "train.jsonl"
    data.write_text(json.dumps({"context": "c", "question": "q", "answer": "a"}) + "\n")
    eval_data = tmp_path / "eval.jsonl"
    rows = [{"id": "e1", "context": "c", "question": "q1", "answer": "5 TB"}]
    rows.append({"id": "e2", "context": "c", "question": "q2", "answer": "three zones"})
    eval_data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text("{}")
    return TrainRequest(
        model=MODEL,
        data=data,
        eval_data=eval_data,
        base_model_dir=base,
        base_name="HuggingFaceTB/SmolLM2-135M-Instruct",
        cache_dir=tmp_path / "cache",
        steps=3,
        seed=1,
    )


@pytest.fixture
def worker(tmp_path: Path) -> FakeMlWorker:
    scripts = tmp_path / "workers"
    scripts.mkdir()
    for name in ("train_lora.py", "eval_lora.py"):
        (scripts / name).write_text("# fake\n")
    return FakeMlWorker(scripts, {"e1": "5 TB", "e2": "three"})


def test_train_logs_a_run_and_registers_a_linked_version(
    request_: TrainRequest, worker: FakeMlWorker
) -> None:
    registry = FakeGateRegistry(MODEL)
    result = train(request_, worker=worker, registry=registry, actor=ACTOR)  # type: ignore[arg-type]
    assert worker.calls == ["train_lora.py", "eval_lora.py"]
    assert result.version == "1" and registry.version_runs == {"1": "run-1"}
    [run] = registry.logged_runs
    assert run["curves"] == {"train_loss": pytest.approx([2.0, 1.9, 1.8])}
    metrics = run["metrics"]
    assert metrics[METRIC_EXACT] == 0.5  # type: ignore[index]
    assert metrics[METRIC_F1] == pytest.approx((1.0 + 2 * 0.5 * 1.0 / 1.5) / 2, abs=1e-4)  # type: ignore[index]
    assert metrics[METRIC_LOSS] == 0.75  # type: ignore[index]
    assert run["params"]["steps"] == "3"  # type: ignore[index]
    assert registry.aliases == {}  # candidate is the quality gate's to set


def test_train_passes_both_workers_progress_on(request_: TrainRequest, worker: FakeMlWorker) -> None:
    seen: list[WorkerProgress] = []
    registry = FakeGateRegistry(MODEL)
    train(request_, worker=worker, registry=registry, actor=ACTOR, on_progress=seen.append)  # type: ignore[arg-type]
    assert [p.phase for p in seen] == ["train_lora.py", "eval_lora.py"]


def test_a_second_run_reuses_the_cache_and_the_version(request_: TrainRequest, worker: FakeMlWorker) -> None:
    registry = FakeGateRegistry(MODEL)
    train(request_, worker=worker, registry=registry, actor=ACTOR)  # type: ignore[arg-type]
    again = train(request_, worker=worker, registry=registry, actor=ACTOR)  # type: ignore[arg-type]
    assert worker.calls == ["train_lora.py", "eval_lora.py"]  # nothing ran again
    assert again.details["cached_training"] and again.details["reused_existing_version"]
    assert again.version == "1" and len(registry.logged_runs) == 1


def test_another_seed_trains_again(request_: TrainRequest, worker: FakeMlWorker) -> None:
    from dataclasses import replace

    registry = FakeGateRegistry(MODEL)
    train(request_, worker=worker, registry=registry, actor=ACTOR)  # type: ignore[arg-type]
    train(replace(request_, seed=2), worker=worker, registry=registry, actor=ACTOR)  # type: ignore[arg-type]
    assert worker.calls.count("train_lora.py") == 2


def test_train_records_its_eval_data_as_the_smoke_probes(
    request_: TrainRequest, worker: FakeMlWorker
) -> None:
    registry = FakeGateRegistry(MODEL)
    result = train(request_, worker=worker, registry=registry, actor=ACTOR)  # type: ignore[arg-type]
    text = registry.attached[str(result.version)][PROBES_FILE]
    probes = parse_probes(text, "recorded")
    assert [(p.prompt, p.reference, p.id) for p in probes] == [
        ("q1", "5 TB", "e1"),
        ("q2", "three zones", "e2"),
    ]
    assert probes[0].system == "Answer briefly using this context: c"  # the chat it was trained on
    assert registry.version_tags[str(result.version)][PROBES_TAG] == probes_digest(text)


def test_train_records_a_probes_file_when_given_and_keeps_them_on_reuse(
    request_: TrainRequest, worker: FakeMlWorker, tmp_path: Path
) -> None:
    from dataclasses import replace

    registry = FakeGateRegistry(MODEL)
    probes_file = tmp_path / "probes.jsonl"
    probes_file.write_text(json.dumps({"prompt": "Where?", "reference": "Here"}) + "\n")
    first = train(replace(request_, probes_file=probes_file), worker=worker, registry=registry, actor=ACTOR)  # type: ignore[arg-type]
    again = train(request_, worker=worker, registry=registry, actor=ACTOR)  # type: ignore[arg-type]
    assert again.version == first.version
    [probe] = parse_probes(registry.attached[str(first.version)][PROBES_FILE], "recorded")
    assert probe.prompt == "Where?"  # written once, like the version's files


def test_a_bad_probes_file_stops_train_before_anything_runs(
    request_: TrainRequest, worker: FakeMlWorker, tmp_path: Path
) -> None:
    from dataclasses import replace

    registry = FakeGateRegistry(MODEL)
    probes_file = tmp_path / "probes.jsonl"
    probes_file.write_text(json.dumps({"prompt": "Where?", "expect": "Here"}) + "\n")
    with pytest.raises(UsageError) as caught:
        train(replace(request_, probes_file=probes_file), worker=worker, registry=registry, actor=ACTOR)  # type: ignore[arg-type]
    assert 'rename "expect" to "reference"' in caught.value.one_line()
    assert worker.calls == [] and registry.version_runs == {}


def test_an_adapter_kept_where_training_cache_says_is_not_trained_again(
    request_: TrainRequest, worker: FakeMlWorker
) -> None:
    # what scripts/build_demo_adapters.py does for the demo's v2 during make setup
    folder, _ = training_cache(
        request_.cache_dir,
        request_.model,
        script=worker.workers_dir / "train_lora.py",
        data=request_.data,
        base_model_dir=request_.base_model_dir,
        base_name=request_.base_name,
        steps=request_.steps,
        seed=request_.seed,
    )
    write_adapter(folder / "adapter")
    summary = {"final_loss": 0.4, "train_seconds": 9.0, "loss_curve": [1.0]}
    (folder / "train.json").write_text(json.dumps(summary))
    result = train(request_, worker=worker, registry=FakeGateRegistry(MODEL), actor=ACTOR)  # type: ignore[arg-type]
    assert worker.calls == ["eval_lora.py"]  # evaluated, not trained
    assert result.details["cached_training"]
