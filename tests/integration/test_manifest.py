"""A vLLM restart after a promotion serves the promoted version at once (review D6).

vLLM starts with the slots ``lora-modules.json`` names. The restart here is the one a
crash or an OOM causes inside a pod: the server process stops and starts again from the
same adapters folder, with no init container, no ``restart-deployment`` restore and no
reconcile. Before the fix only ``init-load-adapters`` wrote the file, so the live slot
came back with the version that was live at the last cold start.
"""

from __future__ import annotations

import json
from pathlib import Path

from loradeploy.stack.local import LocalStack, StackConfig

from .conftest import ASSETS, Stack

MODEL = "it-manifest"
# The default slots (no slot flags): no other integration module uses them, and the
# same commands run on a loradeploy without the fix, where this test fails.
LIVE = "aws-rag-qa-live"
CANDIDATE = "aws-rag-qa-candidate"


def release(stack: Stack, version: str, out: Path) -> None:
    """load into the candidate slot -> set-staged-alias -> promote-adapter."""
    model, source = f"--model-name={MODEL}", f"--source=version:{version}"
    for args in (
        ["load-adapter", model, source, f"--slot-name={CANDIDATE}"],
        ["set-staged-alias", model, source, f"--slot-name={CANDIDATE}"],
        ["promote-adapter", model, "--source-alias=staged"],
    ):
        done = stack.run(*args, output_dir=out / args[0])
        assert done.code == 0, (args, done.stderr)


def test_a_vllm_restart_after_a_promotion_serves_the_promoted_version(stack: Stack, tmp_path: Path) -> None:
    v1 = stack.register(MODEL, "aws-rag-qa-v1", tmp_path / "r1")
    v2 = stack.register(MODEL, "aws-rag-qa-v2", tmp_path / "r2")
    release(stack, v1, tmp_path / "v1")
    release(stack, v2, tmp_path / "v2")
    assert stack.aliases(MODEL)["live"] == v2 and stack.aliases(MODEL)["previous"] == v1
    v2_root = str(stack.info.adapters_root / LIVE / f"{MODEL}-v{v2}")
    assert stack.served()[LIVE] == v2_root
    manifest = json.loads((stack.info.adapters_root / "lora-modules.json").read_text())
    entries = {m["name"]: m["path"] for m in manifest["modules"]}
    assert entries[LIVE] == v2_root  # other models' slots on this server are kept beside it
    assert all(Path(path).is_dir() for path in entries.values())
    # Downloads were staged beside the adapters folder, not in it, and nothing is left.
    assert not (stack.info.adapters_root / ".staging").exists()
    assert list((stack.home / "staging").iterdir()) == []
    loaded = json.loads((tmp_path / "v2" / "load-adapter" / "result.json").read_text())
    assert "list" in loaded["timings_s"]  # the real MLflow listing was read before the download

    local = LocalStack(StackConfig(home=stack.home, assets=ASSETS))
    for name in local.vllm_names():  # the process dies and starts again; nothing else runs
        local.stop(name)
        local.start_vllm(name)

    assert stack.served()[LIVE] == v2_root
    assert stack.aliases(MODEL)["live"] == v2
