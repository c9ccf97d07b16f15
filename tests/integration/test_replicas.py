"""Two real vLLM servers: a swap that fails on one replica is undone on the other, and
the aliases stay as they were.

The second server starts with --max-lora-rank 8: it refuses the rank-16 adapters that
the first one accepts, a real heterogeneous-fleet failure found only at load time.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from loradeploy.stack.local import LocalStack, StackConfig

from .conftest import ASSETS, Stack

MODEL = "it-replicas"
SLOT = "it-replica-slot"


@pytest.fixture(scope="module")
def second_replica(stack: Stack) -> Iterator[str]:
    local = LocalStack(StackConfig(home=stack.home, assets=ASSETS))
    record = local.start_vllm("vllm-strict", extra_args=["--max-lora-rank", "8"], restore=False)
    try:
        yield record.url
    finally:
        local.stop("vllm-strict")


def test_failed_swap_on_one_replica_restores_the_other(
    stack: Stack, second_replica: str, tmp_path: Path
) -> None:
    v1 = stack.register(MODEL, "aws-rag-qa-v1", tmp_path / "v1")
    v2 = stack.register(MODEL, "aws-rag-qa-v2", tmp_path / "v2")
    first = stack.run(
        "load-adapter", f"--model-name={MODEL}", f"--source=version:{v1}", f"--slot-name={SLOT}"
    )
    assert first.code == 0, first.stderr
    old_root = stack.served()[SLOT]
    assert SLOT not in stack.served(second_replica)
    aliases_before = stack.aliases(MODEL)

    done = stack.run(
        "load-adapter",
        f"--model-name={MODEL}",
        f"--source=version:{v2}",
        f"--slot-name={SLOT}",
        f"--vllm-url={stack.info.vllm_url}",
        f"--vllm-url={second_replica}",
        output_dir=tmp_path / "both",
    )
    assert done.code == 3, done.stderr
    assert len(done.error_lines) == 1 and second_replica in done.error_lines[0]
    # The replica that took the new version has the previous one back; the strict one
    # serves nothing under the slot, as before; aliases are untouched.
    assert stack.served()[SLOT] == old_root
    assert SLOT not in stack.served(second_replica)
    assert stack.aliases(MODEL) == aliases_before
