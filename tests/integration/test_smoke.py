"""Step 2 with the specification's flags alone, against the real servers: the smoke test
sends the probes recorded with the version the slot serves, through the chat API (the
served SmolLM2-135M-Instruct has a chat template), and checks the answers against their
references. A healthy demo adapter passes; the regressed one (trained on shuffled
answers) and a corrupted one (weights zeroed: the base model's answers) fail it."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

from loradeploy.domain.smoke import PROBES_FILE, read_probes

from .conftest import DEMO_ADAPTERS, PROBES, Outcome, Stack

MODEL = "it-smoke"
SLOT = "it-smoke-candidate"
SPEC_FLAGS = (f"--adapter-name={SLOT}", "--num-requests=3", "--max-latency=30")


def register_and_load(stack: Stack, adapter_dir: Path, out: Path) -> str:
    """Register ``adapter_dir`` with the repository's probes and load it into the slot."""
    done = stack.run(
        "register",
        f"--model-name={MODEL}",
        f"--adapter-dir={adapter_dir}",
        f"--probes-file={PROBES}",
        output_dir=out / "register",
    )
    assert done.code == 0, done.stderr
    assert done.result is not None
    version = str(done.result["version"])
    load = stack.run(
        "load-adapter",
        f"--model-name={MODEL}",
        f"--source=version:{version}",
        f"--slot-name={SLOT}",
        output_dir=out / "load",
    )
    assert load.code == 0, load.stderr
    return version


def smoke(stack: Stack, out: Path) -> Outcome:
    """Exactly the specification's step 2 (and where to write the result)."""
    return stack.run("smoke-test", *SPEC_FLAGS, output_dir=out / "smoke")


def checks(outcome: Outcome) -> dict[str, dict[str, object]]:
    assert outcome.result is not None, outcome.stderr
    return {str(c["name"]): c for c in outcome.result["checks"]}  # type: ignore[attr-defined]


def zeroed_copy(source: Path, target: Path) -> Path:
    """The adapter with every weight 0.0: loads fine, changes nothing (a broken export)."""
    shutil.copytree(source, target)
    weights = target / "adapter_model.safetensors"
    raw = bytearray(weights.read_bytes())
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + length])
    start = 8 + length
    for name, entry in header.items():
        if name != "__metadata__":
            begin, end = entry["data_offsets"]
            raw[start + begin : start + end] = bytes(end - begin)
    weights.write_bytes(bytes(raw))
    return target


def test_a_healthy_release_passes_with_its_recorded_probes_checked(stack: Stack, tmp_path: Path) -> None:
    version = register_and_load(stack, DEMO_ADAPTERS / "aws-rag-qa-v2", tmp_path)
    done = smoke(stack, tmp_path)
    assert done.code == 0, done.stderr + done.stdout
    assert done.result is not None
    details = done.result["details"]
    assert details["api"] == "chat"
    assert details["probes"] == f"recorded with model {MODEL!r} version {version}"
    assert (done.result["model"], done.result["version"]) == (MODEL, version)
    probes = read_probes(PROBES)
    answers = details["answers"]
    assert [a["prompt"] for a in answers] == [p.prompt for p in probes[:3]]
    assert [a["reference"] for a in answers] == [p.reference for p in probes[:3]]
    found = checks(done)
    assert found["answers:match-reference"]["passed"] is True
    assert found["active:differs-from-base"]["passed"] is True
    assert all(found[f"request-{i}:non-empty"]["passed"] for i in (1, 2, 3))
    # The probes stay in the registry: the served folder holds the adapter's files only.
    root = Path(str(stack.served()[SLOT]))
    assert sorted(p.name for p in root.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    assert PROBES_FILE not in {p.name for p in root.parent.rglob("*")}


def test_the_regressed_adapter_fails_on_its_answers(stack: Stack, tmp_path: Path) -> None:
    register_and_load(stack, DEMO_ADAPTERS / "aws-rag-qa-regressed", tmp_path)
    served_before = stack.served()
    done = smoke(stack, tmp_path)
    assert done.code == 1, done.stderr + done.stdout
    assert len(done.error_lines) == 1 and "answers:match-reference" in done.error_lines[0]
    found = checks(done)
    assert found["answers:match-reference"]["passed"] is False
    assert all(found[f"request-{i}:non-empty"]["passed"] for i in (1, 2, 3))  # it does answer
    assert stack.served() == served_before


def test_a_corrupted_adapter_answering_like_the_base_model_fails(stack: Stack, tmp_path: Path) -> None:
    broken = zeroed_copy(DEMO_ADAPTERS / "aws-rag-qa-v2", tmp_path / "zeroed")
    register_and_load(stack, broken, tmp_path)
    done = smoke(stack, tmp_path)
    assert done.code == 1, done.stderr + done.stdout
    found = checks(done)
    assert found["active:differs-from-base"]["passed"] is False
    assert found["answers:match-reference"]["passed"] is False  # the base model's answers


def test_a_prompts_file_still_wins(stack: Stack, tmp_path: Path) -> None:
    register_and_load(stack, DEMO_ADAPTERS / "aws-rag-qa-v2", tmp_path)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "Question: What is Amazon S3 used for?\nAnswer:"}) + "\n")
    done = stack.run("smoke-test", *SPEC_FLAGS, f"--prompts-file={prompts}", output_dir=tmp_path / "smoke")
    assert done.result is not None, done.stderr
    assert done.result["details"]["probes"] == "prompts file"
    assert "answers:match-reference" not in checks(done)
