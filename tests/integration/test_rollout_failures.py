"""Rollouts on the real servers: a put-back that fails, and what a same-name swap answers.

1. Two real vLLM servers. The second starts with ``--max-lora-rank 8`` and so refuses
   the rank-16 demo adapters (a real heterogeneous-fleet failure). The first is reached
   through a loopback proxy that forwards everything but refuses its second adapter load
   (HTTP 503): the load of the rollout passes, the put-back of the old folder does not.
   The step must say which replica is left on which folder (error line and
   ``result.json``), exit 75, and ``reconcile`` must repair it.
2. A prompt asked before an in-place swap is answered afterwards exactly as a slot that
   only ever served the new version answers it (greedy; vLLM issues 42125 and 30931
   describe servers where a reused name keeps prefix-cache blocks of the old weights).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from loradeploy.stack.local import LocalStack, StackConfig
from support.fault_proxy import Fault, FaultProxy

from .conftest import ASSETS, PROBES, Stack

MODEL = "it-rollout"
LIVE = "it-ro-live"
CANDIDATE = "it-ro-candidate"
SAME = "it-ro-same"
FRESH = "it-ro-fresh"
TRANSIENT = 75
LOAD = "POST /v1/load_lora_adapter"


class LoadsRefusedAfter(FaultProxy):
    """Forwards every request to the real vLLM, except adapter loads after the first
    ``allowed`` ones (counted from ``arm``): those are answered 503, as an overloaded
    server does."""

    def __init__(self, upstream: str) -> None:
        super().__init__(upstream)
        self.allowed: int | None = None
        self.loads = 0

    def refuse_loads_after(self, allowed: int) -> None:
        self.arm(after=0, fault="503")  # clears the counters
        self.allowed, self.loads = allowed, 0

    def disarm(self) -> None:
        super().disarm()
        self.allowed = None

    def _decide(self, line: str) -> Fault | None:
        with self._lock:
            self.requests.append(line)
            if self.allowed is None or not line.startswith(LOAD):
                return None
            self.loads += 1
            if self.loads <= self.allowed:
                return None
            self.faults_served += 1
            return "503"


def _root(stack: Stack, slot: str, version: str) -> str:
    return str(stack.info.adapters_root / slot / f"{MODEL}-v{version}")


def _set_alias(stack: Stack, alias: str, version: str) -> None:
    httpx.post(
        f"{stack.info.tracking_uri}/api/2.0/mlflow/registered-models/alias",
        json={"name": MODEL, "alias": alias, "version": version},
        timeout=10,
    ).raise_for_status()


def _unload(url: str, *slots: str) -> None:
    for slot in slots:
        httpx.post(f"{url}/v1/unload_lora_adapter", json={"lora_name": slot}, timeout=30)


def _answers(url: str, slot: str, prompts: list[str]) -> list[str]:
    answers = []
    for prompt in prompts:
        response = httpx.post(
            f"{url}/v1/completions",
            json={"model": slot, "prompt": prompt, "max_tokens": 12, "temperature": 0.0, "seed": 0},
            timeout=120,
        )
        response.raise_for_status()
        answers.append(response.json()["choices"][0]["text"])
    return answers


@pytest.fixture(scope="module")
def versions(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    out = tmp_path_factory.mktemp("rollout")
    return {
        "v1": stack.register(MODEL, "aws-rag-qa-v1", out / "v1"),
        "v2": stack.register(MODEL, "aws-rag-qa-v2", out / "v2"),
    }


@pytest.fixture(scope="module")
def strict_replica(stack: Stack) -> Iterator[str]:
    local = LocalStack(StackConfig(home=stack.home, assets=ASSETS))
    record = local.start_vllm("vllm-rollout-strict", extra_args=["--max-lora-rank", "8"], restore=False)
    try:
        yield record.url
    finally:
        local.stop("vllm-rollout-strict")


def test_a_same_name_swap_answers_as_a_fresh_slot(
    stack: Stack, versions: dict[str, str], tmp_path: Path
) -> None:
    url = stack.info.vllm_url
    # Raw completions in the base model's chat format (SmolLM2's ChatML), which the
    # chat-tuned demo adapters answer; a bare question gets empty answers from both.
    probes = [json.loads(line) for line in PROBES.read_text().splitlines()[:3]]
    prompts = [
        f"<|im_start|>system\n{p['system']}<|im_end|>\n<|im_start|>user\n{p['prompt']}<|im_end|>\n"
        "<|im_start|>assistant\n"
        for p in probes
    ]
    load = ["load-adapter", f"--model-name={MODEL}"]
    try:
        done = stack.run(*load, f"--source=version:{versions['v1']}", f"--slot-name={SAME}")
        assert done.code == 0, done.stderr
        before = _answers(url, SAME, prompts)  # fills the prefix cache under this name

        done = stack.run(*load, f"--source=version:{versions['v2']}", f"--slot-name={SAME}")
        assert done.code == 0, done.stderr
        assert stack.served()[SAME] == _root(stack, SAME, versions["v2"])
        after = _answers(url, SAME, prompts)

        done = stack.run(*load, f"--source=version:{versions['v2']}", f"--slot-name={FRESH}")
        assert done.code == 0, done.stderr
        fresh = _answers(url, FRESH, prompts)
    finally:
        _unload(url, SAME, FRESH)

    assert before != fresh, "v1 and v2 answer these prompts alike: the test could not see a stale answer"
    assert after == fresh


def test_a_put_back_that_fails_names_the_replica_left_and_reconcile_repairs_it(
    stack: Stack, versions: dict[str, str], strict_replica: str, tmp_path: Path
) -> None:
    v1, v2 = versions["v1"], versions["v2"]
    main = stack.info.vllm_url
    _set_alias(stack, "live", v1)
    done = stack.run("load-adapter", f"--model-name={MODEL}", f"--source=version:{v1}", f"--slot-name={LIVE}")
    assert done.code == 0, done.stderr
    assert stack.served(main)[LIVE] == _root(stack, LIVE, v1)
    assert LIVE not in stack.served(strict_replica)

    proxy = LoadsRefusedAfter(main)
    with proxy.running():
        proxy.refuse_loads_after(1)  # the rollout's load passes, the put-back's do not
        failed = stack.run(
            "load-adapter",
            f"--model-name={MODEL}",
            f"--source=version:{v2}",
            f"--slot-name={LIVE}",
            f"--vllm-url={proxy.url}",
            f"--vllm-url={strict_replica}",
            output_dir=tmp_path / "failed",
            env={"LORADEPLOY_SWAP_RESTORE_S": "8"},  # retried 8 s, not the default 60 s
        )
        assert proxy.loads > 2, "the put-back was tried once, not retried"

    # The strict replica refused v2 and serves nothing, as before; the first replica is
    # left on v2, and both the error line and result.json say so.
    assert failed.code == TRANSIENT, failed.stderr
    assert len(failed.error_lines) == 1, failed.stderr
    line = failed.error_lines[0]
    assert proxy.url in line and _root(stack, LIVE, v2) in line
    assert strict_replica in line  # the refusal that started it
    assert failed.result is not None and failed.result["exit_code"] == TRANSIENT
    assert failed.result["details"]["replicas_left"] == [  # type: ignore[index]
        {
            "replica": proxy.url,
            "slot": LIVE,
            "serves": _root(stack, LIVE, v2),
            "wanted": _root(stack, LIVE, v1),
            "known": True,
        }
    ]
    assert stack.served(main)[LIVE] == _root(stack, LIVE, v2)
    assert LIVE not in stack.served(strict_replica)
    assert stack.aliases(MODEL)["live"] == v1

    status = stack.run(
        "status", f"--model-name={MODEL}", f"--live-slot={LIVE}", f"--candidate-slot={CANDIDATE}"
    )
    assert status.code == 1, status.stdout  # drift: the live slot serves what live does not name

    repaired = stack.run(
        "reconcile", f"--model-name={MODEL}", f"--live-slot={LIVE}", f"--candidate-slot={CANDIDATE}"
    )
    assert repaired.code == 0, repaired.stderr
    assert stack.served(main)[LIVE] == _root(stack, LIVE, v1)
    _unload(main, LIVE)
