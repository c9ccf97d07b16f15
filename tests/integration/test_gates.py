"""Gate 1 and Gate 2 on the real servers, with the real demo adapters.

v1 is released to the live slot; v2 is staged in the candidate slot and passes Gate 1;
Gate 2 runs a small load and writes its report; the regressed adapter (trained on
shuffled answers) is staged next and Gate 1 stops it: eval-failed is set and nothing
else changes. Kept small for a 2-core CI machine: 16 questions, 16 requests per slot.
Last, ``train`` at a tiny size and the quality gate on its run (MLflow only).
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from .conftest import DEMO_ADAPTERS, Stack

MODEL = "it-gates"
LIVE = "gates-live"
CANDIDATE = "gates-candidate"
EVAL = Path(__file__).resolve().parents[2] / "data" / "aws-rag-qa" / "eval.jsonl"
SLOTS = [f"--candidate-slot={CANDIDATE}", f"--live-slot={LIVE}"]
# The local judge is the 135M base model: little better than chance, but its position
# bias cancels (answer order is balanced). The F1 checks carry the decision here.
GATE1 = [f"--model-name={MODEL}", *SLOTS, f"--eval-data={EVAL}"]


def ok(stack: Stack, out: Path, *args: str) -> dict[str, object]:
    done = stack.run(*args, output_dir=out / args[0])
    assert done.code == 0, (args, done.stderr, done.stdout[-2000:])
    assert done.result is not None
    return done.result


def stage(stack: Stack, adapter: str, out: Path) -> str:
    """register (candidate) -> load into the candidate slot -> staged; the version."""
    registered = ok(
        stack,
        out / adapter,
        "register",
        f"--model-name={MODEL}",
        f"--adapter-dir={DEMO_ADAPTERS / adapter}",
        "--reuse-identical",
        "--alias=candidate",
    )
    ok(
        stack,
        out / adapter,
        "load-adapter",
        f"--model-name={MODEL}",
        "--source=alias:candidate",
        f"--slot-name={CANDIDATE}",
    )
    ok(
        stack,
        out / adapter,
        "set-staged-alias",
        f"--model-name={MODEL}",
        "--source=alias:candidate",
        f"--slot-name={CANDIDATE}",
    )
    return str(registered["version"])


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gates")


@pytest.fixture(scope="module")
def versions(stack: Stack, out: Path) -> dict[str, str]:
    v1 = stage(stack, "aws-rag-qa-v1", out)
    ok(
        stack,
        out / "v1",
        "promote-adapter",
        f"--model-name={MODEL}",
        f"--live-slot={LIVE}",
        "--reason=gates test",
    )
    v2 = stage(stack, "aws-rag-qa-v2", out)
    assert stack.aliases(MODEL) == {"live": v1, "candidate": v2, "staged": v2}
    return {"v1": v1, "v2": v2}


def test_v2_against_v1_passes_gate_1(stack: Stack, versions: dict[str, str], out: Path) -> None:
    v1, v2 = versions["v1"], versions["v2"]
    result = ok(stack, out / "v2-gate1", "compare-decision", *GATE1)
    assert result["version"] == v2
    details = result["details"]
    assert isinstance(details, dict)
    assert details["live_target"] == LIVE and details["decision"] == "eval-passed"
    checks = {c["name"]: c["passed"] for c in result["checks"]}  # type: ignore[union-attr]
    accuracy = details["figures"]["judge_accuracy"]
    if accuracy >= 0.75:  # a calibrated judge counts
        assert checks == {
            "quality-floor": True,
            "non-inferiority": True,
            "judge-calibration": True,
            "judge-win-rate": True,
        }
    else:  # the 135M judge is not expected to pass calibration: inconclusive, not counted
        assert checks == {"quality-floor": True, "non-inferiority": True}
        inconclusive = {c["name"] for c in details["inconclusive_checks"]}
        assert inconclusive == {"judge-calibration", "judge-win-rate"}
    assert len(details["judge_calibration"]) == 16
    print(f"Gate 1 judge calibration accuracy (demo judge): {accuracy}")
    assert len(details["questions"]) == 16
    assert stack.aliases(MODEL) == {"live": v1, "candidate": v2, "staged": v2, "eval-passed": v2}
    for name in ("report.md", "plot.svg", "result.json"):
        assert (out / "v2-gate1" / "compare-decision" / name).is_file()


def test_perf_decision_runs_a_small_load_and_writes_its_report(
    stack: Stack, versions: dict[str, str], out: Path
) -> None:
    done = stack.run(
        "perf-decision",
        f"--model-name={MODEL}",
        *SLOTS,
        f"--eval-data={EVAL}",
        "--requests=16",
        "--concurrency=4",
        "--max-tokens=32",
        output_dir=out / "v2-gate2",
    )
    assert done.code in (0, 1), done.stderr  # the verdict depends on this machine's noise
    assert done.result is not None
    checks = {c["name"] for c in done.result["checks"]}  # type: ignore[union-attr]
    assert checks == {"p50-latency-ratio", "p95-latency-ratio", "throughput-ratio", "error-rate"}
    figures = done.result["details"]["figures"]  # type: ignore[index]
    assert figures["candidate_requests"] == 16 and figures["live_requests"] == 16
    assert figures["candidate_errors"] == 0
    decision = "perf-passed" if done.code == 0 else "perf-failed"
    assert stack.aliases(MODEL)[decision] == versions["v2"]
    assert (out / "v2-gate2" / "report.md").read_text().startswith("# Gate 2")
    assert (out / "v2-gate2" / "plot.svg").is_file()


def test_the_regressed_adapter_is_stopped_by_gate_1(
    stack: Stack, versions: dict[str, str], out: Path
) -> None:
    bad = stage(stack, "aws-rag-qa-regressed", out)
    aliases, registered, served = stack.snapshot(MODEL)
    done = stack.run("compare-decision", *GATE1, output_dir=out / "regressed-gate1")
    assert done.code == 1, (done.stderr, done.stdout[-2000:])
    assert len(done.error_lines) == 1 and "checks failed" in done.error_lines[0]
    assert done.result is not None
    failed = {c["name"] for c in done.result["checks"] if not c["passed"]}  # type: ignore[union-attr]
    assert {"quality-floor", "non-inferiority"} <= failed
    assert stack.aliases(MODEL) == {**aliases, "eval-failed": bad}
    assert stack.versions(MODEL) == registered and stack.served() == served
    assert (out / "regressed-gate1" / "report.md").read_text().startswith("# Gate 1 (evaluation)")


def test_train_logs_a_run_and_the_quality_gate_reads_it(stack: Stack, tmp_path: Path) -> None:
    """loradeploy train at a tiny size (2 steps, 4 eval questions, 8-token answers), then
    the quality gate on its run: a threshold it cannot meet leaves the aliases alone,
    thresholds it meets set candidate."""
    model = "it-train"
    eval_data = tmp_path / "eval4.jsonl"
    eval_data.write_text("".join(EVAL.read_text().splitlines(keepends=True)[:4]))
    trained = stack.run(
        "train",
        f"--model-name={model}",
        f"--data={EVAL.parent / 'train.jsonl'}",
        f"--eval-data={eval_data}",
        "--steps=2",
        "--max-new-tokens=8",
        f"--cache-dir={tmp_path / 'cache'}",
        output_dir=tmp_path / "train",
    )
    assert trained.code == 0, (trained.stderr, trained.stdout[-2000:])
    assert trained.result is not None
    details = trained.result["details"]
    assert isinstance(details, dict)
    run_id, version = str(details["run_id"]), str(trained.result["version"])
    assert set(details["metrics"]) >= {"eval_token_f1", "eval_exact_match", "eval_loss"}
    assert stack.versions(model) == [version]
    linked = httpx.get(
        f"{stack.info.tracking_uri}/api/2.0/mlflow/model-versions/get",
        params={"name": model, "version": version},
        timeout=10,
    ).json()["model_version"]
    assert linked["run_id"] == run_id
    curve = httpx.get(
        f"{stack.info.tracking_uri}/api/2.0/mlflow/metrics/get-history",
        params={"run_id": run_id, "metric_key": "train_loss"},
        timeout=10,
    ).json()["metrics"]
    assert [point["step"] for point in curve] == [1, 2]

    strict = stack.run("quality-gate", f"--model-name={model}", f"--run-id={run_id}", "--min-f1=1.01")
    assert strict.code == 1, strict.stderr
    assert stack.aliases(model) == {}
    loose = stack.run(
        "quality-gate", f"--model-name={model}", f"--version={version}", "--min-f1=0", "--max-eval-loss=100"
    )
    assert loose.code == 0, loose.stderr
    assert stack.aliases(model) == {"candidate": version}
