"""reconcile on the real servers: after vLLM lost its runtime-loaded adapters (or serves
the wrong version in a slot), one ``loradeploy reconcile`` serves live and staged again,
from the registry, without touching an alias."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
import pytest

from loradeploy.stack import processes
from loradeploy.stack.local import LocalStack, StackConfig

from .conftest import ASSETS, DEMO_ADAPTERS, Stack

MODEL = "it-reconcile"
LIVE = "itr-live"
CANDIDATE = "itr-candidate"
SLOTS = [f"--live-slot={LIVE}", f"--candidate-slot={CANDIDATE}"]


def step(stack: Stack, out: Path, *args: str) -> dict[str, object]:
    done = stack.run(*args, output_dir=out / args[0])
    assert done.code == 0, (args, done.stderr, done.stdout[-2000:])
    assert done.result is not None
    return done.result


def stage(stack: Stack, out: Path, adapter: str) -> str:
    """register (candidate) -> load into the candidate slot -> staged; returns the version."""
    registered = step(
        stack,
        out,
        "register",
        f"--model-name={MODEL}",
        f"--adapter-dir={DEMO_ADAPTERS / adapter}",
        "--reuse-identical",
        "--alias=candidate",
    )
    step(
        stack,
        out,
        "load-adapter",
        f"--model-name={MODEL}",
        "--source=alias:candidate",
        f"--slot-name={CANDIDATE}",
    )
    step(
        stack,
        out,
        "set-staged-alias",
        f"--model-name={MODEL}",
        "--source=alias:candidate",
        f"--slot-name={CANDIDATE}",
    )
    return str(registered["version"])


def folder(stack: Stack, slot: str, version: str) -> str:
    return str(stack.info.adapters_root / slot / f"{MODEL}-v{version}")


@pytest.fixture(scope="module")
def versions(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """live = v1 (promoted), staged = v2 (in the candidate slot)."""
    out = tmp_path_factory.mktemp("reconcile")
    v1 = stage(stack, out / "v1", "aws-rag-qa-v1")
    step(stack, out / "v1", "promote-adapter", f"--model-name={MODEL}", f"--live-slot={LIVE}")
    v2 = stage(stack, out / "v2", "aws-rag-qa-v2")
    assert v1 != v2
    aliases = stack.aliases(MODEL)
    assert (aliases["live"], aliases["staged"]) == (v1, v2)
    return {"v1": v1, "v2": v2}


def unload(stack: Stack, slot: str) -> None:
    response = httpx.post(
        f"{stack.info.vllm_url}/v1/unload_lora_adapter", json={"lora_name": slot}, timeout=30
    )
    assert response.status_code == 200, response.text


def reconcile(stack: Stack, out: Path) -> dict[str, object]:
    return step(stack, out, "reconcile", f"--model-name={MODEL}", *SLOTS)


def test_unloaded_slots_are_served_again(stack: Stack, versions: dict[str, str], tmp_path: Path) -> None:
    aliases = stack.aliases(MODEL)
    unload(stack, LIVE)
    unload(stack, CANDIDATE)
    assert LIVE not in stack.served() and CANDIDATE not in stack.served()

    result = reconcile(stack, tmp_path)

    served = stack.served()
    assert served[LIVE] == folder(stack, LIVE, versions["v1"])
    assert served[CANDIDATE] == folder(stack, CANDIDATE, versions["v2"])
    assert stack.aliases(MODEL) == aliases
    assert {r["slot"] for r in result["details"]["repaired"]} == {LIVE, CANDIDATE}  # type: ignore[index]


def test_a_wrong_version_in_the_live_slot_is_replaced(
    stack: Stack, versions: dict[str, str], tmp_path: Path
) -> None:
    aliases = stack.aliases(MODEL)
    wrong = folder(stack, CANDIDATE, versions["v2"])  # exists: the staged version's folder
    response = httpx.post(
        f"{stack.info.vllm_url}/v1/load_lora_adapter",
        json={"lora_name": LIVE, "lora_path": wrong, "load_inplace": True},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    assert stack.served()[LIVE] == wrong

    reconcile(stack, tmp_path)

    assert stack.served()[LIVE] == folder(stack, LIVE, versions["v1"])
    assert stack.aliases(MODEL) == aliases


def test_a_second_run_has_nothing_to_do(stack: Stack, versions: dict[str, str], tmp_path: Path) -> None:
    reconcile(stack, tmp_path / "first")
    before = stack.snapshot(MODEL)
    result = reconcile(stack, tmp_path / "second")
    assert result["details"]["planned"] == []  # type: ignore[index]
    assert stack.snapshot(MODEL) == before


def test_after_vllm_restarts_empty_reconcile_serves_both_slots(
    stack: Stack, versions: dict[str, str], tmp_path: Path
) -> None:
    """The vLLM container restarting inside its pod: the init container does not run
    again, so vLLM comes back without the runtime-loaded adapters. One reconcile (what the
    sidecar runs) serves live and staged again."""
    aliases = stack.aliases(MODEL)
    record = processes.load(stack.home / "run" / "vllm-0.json")
    assert record is not None
    os.killpg(record.pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while processes.group_alive(record.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    restarted = LocalStack(StackConfig(home=stack.home, assets=ASSETS)).start_vllm("vllm-0", restore=False)
    assert restarted.url == stack.info.vllm_url
    assert LIVE not in stack.served() and CANDIDATE not in stack.served()

    reconcile(stack, tmp_path)

    served = stack.served()
    assert served[LIVE] == folder(stack, LIVE, versions["v1"])
    assert served[CANDIDATE] == folder(stack, CANDIDATE, versions["v2"])
    assert stack.aliases(MODEL) == aliases
