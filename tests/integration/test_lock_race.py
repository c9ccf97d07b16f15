"""Six deployers race to roll back the same model, against the real MLflow and vLLM.

All six ``loradeploy promote-adapter --source-alias=previous`` processes start at once.
Exactly one may act; the others must exit 75 (retry later) having changed nothing, and
the aliases must show exactly one rollback. vLLM answers through a loopback proxy that
holds each request a little, so the winner is still working while the others arrive (a
rollback that finished before a latecomer started would let that one roll back again,
legitimately). The second round also delays every MLflow write by up to 1.5 s, as a
loaded registry does: the old write-then-read-back lock let two runs through there.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from support.fault_proxy import FaultProxy

from .conftest import DEMO_ADAPTERS, LORADEPLOY, Stack

MODEL = "race-qa"
LIVE = "race-qa-live"
RACERS = 6


@dataclass
class Race:
    stack: Stack
    v1: str
    v2: str
    mlflow: FaultProxy
    vllm: FaultProxy


@pytest.fixture(scope="module")
def race(stack: Stack) -> Iterator[Race]:
    versions = []
    for adapter in ("aws-rag-qa-v1", "aws-rag-qa-v2"):
        done = stack.run(
            "register",
            f"--model-name={MODEL}",
            f"--adapter-dir={DEMO_ADAPTERS / adapter}",
            "--reuse-identical",
            "--alias=staged",
        )
        assert done.code == 0, done.stderr
        promoted = stack.run(
            "promote-adapter", f"--model-name={MODEL}", "--source-alias=staged", f"--live-slot={LIVE}"
        )
        assert promoted.code == 0, promoted.stderr
        versions.append(stack.aliases(MODEL)["live"])
    v1, v2 = versions
    assert stack.aliases(MODEL) == {"live": v2, "previous": v1}
    mlflow, vllm = FaultProxy(stack.info.tracking_uri), FaultProxy(stack.info.vllm_url)
    with mlflow.running(), vllm.running():
        yield Race(stack, v1, v2, mlflow, vllm)


def _run_racers(race: Race, out: Path) -> list[tuple[int, str, dict[str, object] | None]]:
    processes = []
    for n in range(RACERS):
        folder = out / f"racer-{n}"
        processes.append(
            (
                folder,
                subprocess.Popen(
                    [
                        LORADEPLOY,
                        "promote-adapter",
                        f"--model-name={MODEL}",
                        "--source-alias=previous",
                        f"--live-slot={LIVE}",
                        f"--tracking-uri={race.mlflow.url}",
                        f"--vllm-url={race.vllm.url}",
                        f"--output-dir={folder}",
                    ],
                    env={**race.stack.env, "LORADEPLOY_ACTOR": f"racer-{n}"},
                    cwd=race.stack.home,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    text=True,
                ),
            )
        )
    outcomes = []
    for folder, process in processes:
        _, stderr = process.communicate(timeout=600)
        result_file = folder / "result.json"
        result = json.loads(result_file.read_text()) if result_file.exists() else None
        outcomes.append((process.returncode, stderr, result))
    return outcomes


@pytest.mark.parametrize("slow_registry", [False, True], ids=["fast-registry", "slow-registry-writes"])
def test_exactly_one_of_six_racing_rollbacks_acts(race: Race, tmp_path: Path, slow_registry: bool) -> None:
    before = race.stack.aliases(MODEL)
    assert set(before) == {"live", "previous"}
    race.vllm.arm(after=0, fault="slow", delay_s=1.0)
    race.mlflow.delay_writes(1.5 if slow_registry else 0.0, seed=7)
    try:
        outcomes = _run_racers(race, tmp_path)
    finally:
        race.vllm.disarm()
        race.mlflow.delay_writes(0.0)
    codes = sorted(code for code, _, _ in outcomes)
    summary = [(code, stderr.strip()[:160]) for code, stderr, _ in outcomes]
    assert codes == [0] + [75] * (RACERS - 1), summary
    for code, stderr, result in outcomes:
        if code == 75:
            assert "is being deployed by racer-" in stderr, stderr
            assert len(stderr.strip().splitlines()) == 1, stderr
        else:
            assert result is not None and result["version"] == before["previous"]
    after = race.stack.aliases(MODEL)
    assert after == {"live": before["previous"], "previous": before["live"]}  # exactly one rollback
    assert race.stack.served()[LIVE].endswith(f"{MODEL}-v{before['previous']}")
    assert race.stack.lock_holder(MODEL) is None
    print(f"race ({'slow' if slow_registry else 'fast'} registry): acted 1, refused {RACERS - 1}")
