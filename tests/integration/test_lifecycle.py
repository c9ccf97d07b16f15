"""The whole lifecycle on the real servers: release, promote, roll back, history, the
lock, staging checks, folder cleanup, and the cold-start restore after killing vLLM."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import httpx
import pytest

from loradeploy.stack import processes

from .conftest import DEMO_ADAPTERS, PROBES, Stack

MODEL = "it-lifecycle"
LIVE = "it-live"
CANDIDATE = "it-candidate"
SLOTS = [f"--live-slot={LIVE}"]


def release(stack: Stack, adapter: str, out: Path) -> str:
    """register (candidate) -> load -> smoke -> staged -> promote; returns the version."""
    done = stack.run(
        "register",
        f"--model-name={MODEL}",
        f"--adapter-dir={DEMO_ADAPTERS / adapter}",
        "--reuse-identical",
        "--alias=candidate",
        output_dir=out / "register",
    )
    assert done.code == 0, done.stderr
    assert done.result is not None
    version = str(done.result["version"])
    for args in (
        ["load-adapter", f"--model-name={MODEL}", "--source=alias:candidate", f"--slot-name={CANDIDATE}"],
        [
            "smoke-test",
            f"--adapter-name={CANDIDATE}",
            "--num-requests=2",
            f"--prompts-file={PROBES}",
            f"--model-name={MODEL}",
            f"--expected-version={version}",
        ],
        ["set-staged-alias", f"--model-name={MODEL}", "--source=alias:candidate", f"--slot-name={CANDIDATE}"],
        ["promote-adapter", f"--model-name={MODEL}", *SLOTS, f"--reason=release {adapter}"],
    ):
        step = stack.run(*args, output_dir=out / args[0])
        assert step.code == 0, (args, step.stderr, step.stdout[-2000:])
    return version


@pytest.fixture(scope="module")
def released(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    out = tmp_path_factory.mktemp("lifecycle")
    v1 = release(stack, "aws-rag-qa-v1", out / "v1")
    assert stack.aliases(MODEL) == {"candidate": v1, "live": v1}
    v2 = release(stack, "aws-rag-qa-v2", out / "v2")
    return {"v1": v1, "v2": v2, "out": str(out)}


def live_root(stack: Stack, version: str) -> str:
    return str(stack.info.adapters_root / LIVE / f"{MODEL}-v{version}")


def test_promote_moves_live_and_previous(stack: Stack, released: dict[str, str]) -> None:
    v1, v2 = released["v1"], released["v2"]
    assert stack.aliases(MODEL) == {"candidate": v2, "live": v2, "previous": v1}
    assert stack.served()[LIVE] == live_root(stack, v2)
    promote = json.loads((Path(released["out"]) / "v2" / "promote-adapter" / "result.json").read_text())
    assert promote["details"]["alias_moves"] == [
        f"live: {v1} -> {v2}",
        f"previous: - -> {v1}",
        f"staged: {v2} -> (removed)",
    ]


def test_two_rollbacks_return_to_the_start(stack: Stack, released: dict[str, str], tmp_path: Path) -> None:
    v1, v2 = released["v1"], released["v2"]
    before = stack.aliases(MODEL)
    first = stack.run(
        "promote-adapter",
        f"--model-name={MODEL}",
        "--source-alias=previous",
        *SLOTS,
        output_dir=tmp_path / "one",
    )
    assert first.code == 0, first.stderr
    assert stack.aliases(MODEL) == {**before, "live": v1, "previous": v2}
    assert stack.served()[LIVE] == live_root(stack, v1)
    second = stack.run("promote-adapter", f"--model-name={MODEL}", "--source-alias=previous", *SLOTS)
    assert second.code == 0, second.stderr
    assert stack.aliases(MODEL) == before
    assert stack.served()[LIVE] == live_root(stack, v2)


def test_history_records_every_move(stack: Stack, released: dict[str, str], tmp_path: Path) -> None:
    done = stack.run("history", f"--model-name={MODEL}", output_dir=tmp_path)
    assert done.code == 0, done.stderr
    assert done.result is not None
    moves = done.result["details"]["moves"]
    steps = {move["step"] for move in moves}
    assert {"register", "set-staged-alias", "promote-adapter"} <= steps
    live_moves = [(m["from_version"], m["to_version"]) for m in moves if m["alias"] == "live"]
    assert live_moves[:2] == [(None, released["v1"]), (released["v1"], released["v2"])]
    assert all(m["who"] and m["when"] and m["reason"] for m in moves)
    assert "release aws-rag-qa-v2" in {m["reason"] for m in moves}


def test_promote_of_a_missing_alias_changes_nothing(stack: Stack, released: dict[str, str]) -> None:
    before = stack.snapshot(MODEL)
    done = stack.run("promote-adapter", f"--model-name={MODEL}", "--source-alias=eval-passed", *SLOTS)
    assert done.code == 3, done.stderr
    assert "eval-passed" in done.error_lines[0] and "next:" in done.error_lines[0]
    assert stack.snapshot(MODEL) == before


def set_model_tag(stack: Stack, key: str, value: str) -> None:
    response = httpx.post(
        f"{stack.info.tracking_uri}/api/2.0/mlflow/registered-models/set-tag",
        json={"name": MODEL, "key": key, "value": value},
        timeout=10,
    )
    response.raise_for_status()


def test_lock_held_by_another_run_fails_fast(stack: Stack, released: dict[str, str]) -> None:
    holder = {
        "holder": "ci-runner@elsewhere",
        "step": "promote-adapter",
        "run_id": "other",
        "host": "elsewhere",
        "pid": 1,
        "expires_at": time.time() + 600,
    }
    number = stack.hold_lock(MODEL, holder)
    before = stack.snapshot(MODEL)
    try:
        done = stack.run("promote-adapter", f"--model-name={MODEL}", "--source-alias=previous", *SLOTS)
        assert done.code == 75, done.stderr
        assert "ci-runner@elsewhere" in done.error_lines[0]
        assert f"loradeploy unlock --model-name {MODEL} --run-id other" in done.error_lines[0]
        load = stack.run(
            "load-adapter", f"--model-name={MODEL}", "--source=alias:previous", f"--slot-name={CANDIDATE}"
        )
        assert load.code == 75, load.stderr
        assert stack.snapshot(MODEL) == before
        # A crashed run's lease expires (plus the clock-skew allowance): then it no longer blocks.
        stack.set_lock_record(MODEL, number, {**holder, "expires_at": time.time() - 60})
        again = stack.run("promote-adapter", f"--model-name={MODEL}", *SLOTS, "--source-alias=live")
        assert again.code == 0, again.stderr
        assert stack.lock_holder(MODEL) is None
    finally:
        if stack.lock_holder(MODEL) is not None:
            stack.set_lock_record(MODEL, max(stack.lock_records(MODEL)), {**holder, "released": True})


def test_a_malformed_lock_is_one_line_and_unlock_clears_it(stack: Stack, released: dict[str, str]) -> None:
    number = stack.hold_lock(MODEL, {"run_id": "x", "expires_at": "soon"})
    before = stack.snapshot(MODEL)
    done = stack.run("promote-adapter", f"--model-name={MODEL}", "--source-alias=live", *SLOTS)
    assert done.code == 3, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert f"loradeploy unlock --model-name {MODEL} --run-id lease-{number}" in done.error_lines[0]
    assert stack.snapshot(MODEL) == before
    cleared = stack.run("unlock", f"--model-name={MODEL}", f"--run-id=lease-{number}")
    assert cleared.code == 0, cleared.stderr
    again = stack.run("promote-adapter", f"--model-name={MODEL}", "--source-alias=live", *SLOTS)
    assert again.code == 0, again.stderr


def _interrupted_rollback(stack: Stack, v1: str, v2: str, run_key: str) -> None:
    """What a rollback killed after its first alias move leaves: its plan, live moved."""
    plan = {
        "run_id": "crashed-run",
        "run_key": run_key,
        "step": "promote-adapter",
        "intent": "promote alias:previous",
        "created_at": time.time(),
        "moves": [
            {"alias": "live", "from_version": v2, "to_version": v1},
            {"alias": "previous", "from_version": v1, "to_version": v2},
        ],
    }
    set_model_tag(stack, "loradeploy.pending", json.dumps(plan))
    httpx.post(
        f"{stack.info.tracking_uri}/api/2.0/mlflow/registered-models/alias",
        json={"name": MODEL, "alias": "live", "version": v1},
        timeout=10,
    ).raise_for_status()


def test_a_retried_rollback_finishes_its_plan_and_rolls_back_once(
    stack: Stack, released: dict[str, str]
) -> None:
    v1, v2 = released["v1"], released["v2"]
    assert stack.aliases(MODEL)["live"] == v2
    _interrupted_rollback(stack, v1, v2, run_key="workflow-7/rollback")
    retry = {"LORADEPLOY_RUN_KEY": "workflow-7/rollback"}
    done = stack.run("promote-adapter", f"--model-name={MODEL}", "--source-alias=previous", *SLOTS, env=retry)
    assert done.code == 0, done.stderr
    assert stack.aliases(MODEL)["live"] == v1 and stack.aliases(MODEL)["previous"] == v2
    assert stack.served()[LIVE] == live_root(stack, v1)
    back = stack.run("promote-adapter", f"--model-name={MODEL}", "--source-alias=previous", *SLOTS)
    assert back.code == 0, back.stderr  # restore the module's state: v2 live


def test_another_runs_interrupted_plan_is_finished_and_nothing_more(
    stack: Stack, released: dict[str, str]
) -> None:
    v1, v2 = released["v1"], released["v2"]
    _interrupted_rollback(stack, v1, v2, run_key="someone-else")
    done = stack.run("promote-adapter", f"--model-name={MODEL}", "--source-alias=previous", *SLOTS)
    assert done.code == 3, done.stderr
    assert "crashed-run" in done.error_lines[0] and "not applied" in done.error_lines[0]
    # The plan was finished (live v1, previous v2) and the rollback was not applied on top.
    assert stack.aliases(MODEL)["live"] == v1 and stack.aliases(MODEL)["previous"] == v2
    back = stack.run("promote-adapter", f"--model-name={MODEL}", "--source-alias=previous", *SLOTS)
    assert back.code == 0, back.stderr
    assert stack.aliases(MODEL)["live"] == v2


def test_set_staged_refuses_when_the_alias_moved(stack: Stack, released: dict[str, str]) -> None:
    v1, v2 = released["v1"], released["v2"]
    load = stack.run(
        "load-adapter", f"--model-name={MODEL}", f"--source=version:{v1}", f"--slot-name={CANDIDATE}"
    )
    assert load.code == 0, load.stderr
    before = stack.snapshot(MODEL)
    assert before[0]["candidate"] == v2  # the slot serves v1, the alias names v2
    done = stack.run(
        "set-staged-alias", f"--model-name={MODEL}", "--source=alias:candidate", f"--slot-name={CANDIDATE}"
    )
    assert done.code == 3, done.stderr
    assert CANDIDATE in done.error_lines[0] and f"version {v2}" in done.error_lines[0]
    assert stack.snapshot(MODEL) == before


def test_smoke_test_checks_the_served_version(stack: Stack, released: dict[str, str], tmp_path: Path) -> None:
    done = stack.run(
        "smoke-test",
        f"--adapter-name={CANDIDATE}",
        "--num-requests=3",  # the probes' references are checked too: a mean, not one answer
        f"--prompts-file={PROBES}",
        f"--model-name={MODEL}",
        "--expected-version=999",
        output_dir=tmp_path,
    )
    assert done.code == 1, done.stderr
    assert done.result is not None
    failed = [c["name"] for c in done.result["checks"] if not c["passed"]]
    assert failed == ["served-version"]


def test_unused_folders_are_removed_and_needed_ones_kept(stack: Stack, released: dict[str, str]) -> None:
    v1, v2 = released["v1"], released["v2"]
    reg = stack.run(
        "register",
        f"--model-name={MODEL}",
        f"--adapter-dir={DEMO_ADAPTERS / 'aws-rag-qa-regressed'}",
        "--reuse-identical",
        "--output-dir=" + str(stack.home / "reg3"),
    )
    assert reg.code == 0, reg.stderr
    v3 = json.loads((stack.home / "reg3" / "result.json").read_text())["version"]
    for version in (v3, v1):  # v3 in the candidate slot, then replaced by v1
        done = stack.run(
            "load-adapter", f"--model-name={MODEL}", f"--source=version:{version}", f"--slot-name={CANDIDATE}"
        )
        assert done.code == 0, done.stderr
    v3_folder = stack.info.adapters_root / CANDIDATE / f"{MODEL}-v{v3}"
    assert v3_folder.is_dir()
    done = stack.run("promote-adapter", f"--model-name={MODEL}", "--source-alias=live", *SLOTS)
    assert done.code == 0, done.stderr
    assert not v3_folder.exists(), "no alias needs v3 and no name serves it"
    for version in (v1, v2):  # live and previous stay
        assert (stack.info.adapters_root / LIVE / f"{MODEL}-v{version}").is_dir()
    assert Path(stack.served()[CANDIDATE]).is_dir()


def test_cold_start_restores_live_and_staged(stack: Stack, released: dict[str, str], tmp_path: Path) -> None:
    """Kill vLLM outright, then the restart restores both slots with no manual step."""
    v1, v2 = released["v1"], released["v2"]
    # Stage v1 in the candidate slot so there is something to restore there.
    httpx.post(
        f"{stack.info.tracking_uri}/api/2.0/mlflow/registered-models/alias",
        json={"name": MODEL, "alias": "staged", "version": v1},
        timeout=10,
    ).raise_for_status()
    record = processes.load(stack.home / "run" / "vllm-0.json")
    assert record is not None
    os.killpg(record.pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while processes.group_alive(record.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    aliases_before = stack.aliases(MODEL)
    started = time.monotonic()
    done = stack.run(
        "restart-deployment",
        "--local-stack",
        f"--model-name={MODEL}",
        f"--live-slot={LIVE}",
        f"--candidate-slot={CANDIDATE}",
        output_dir=tmp_path,
    )
    elapsed = time.monotonic() - started
    assert done.code == 0, done.stderr
    served = stack.served()
    assert served[LIVE] == live_root(stack, v2)
    assert served[CANDIDATE] == str(stack.info.adapters_root / CANDIDATE / f"{MODEL}-v{v1}")
    assert stack.aliases(MODEL) == aliases_before
    print(f"cold-start restore (kill -> both slots served): {elapsed:.1f} s")
