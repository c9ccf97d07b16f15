"""Steps 1-3 against the real servers: register -> load -> smoke -> staged, and every
failure case leaves aliases, registered versions and served adapters as they were."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import DEMO_ADAPTERS, PROBES, Stack

MODEL = "it-first-deploy"
SLOT = "it-first-candidate"


@pytest.fixture(scope="module")
def deployed(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Register v1 and v2, mark v1 candidate, and run steps 1-3 once."""
    out = tmp_path_factory.mktemp("first")
    versions = {}
    for name in ("aws-rag-qa-v1", "aws-rag-qa-v2"):
        done = stack.run(
            "register",
            f"--model-name={MODEL}",
            f"--adapter-dir={DEMO_ADAPTERS / name}",
            output_dir=out / name,
        )
        assert done.code == 0, done.stderr
        assert done.result is not None
        versions[name] = str(done.result["version"])
    done = stack.run(
        "register",
        f"--model-name={MODEL}",
        f"--adapter-dir={DEMO_ADAPTERS / 'aws-rag-qa-v1'}",
        "--reuse-identical",
        "--alias=candidate",
    )
    assert done.code == 0, done.stderr
    load = stack.run(
        "load-adapter",
        f"--model-name={MODEL}",
        "--source=alias:candidate",
        f"--slot-name={SLOT}",
        output_dir=out / "load",
    )
    assert load.code == 0, load.stderr
    smoke = stack.run(
        "smoke-test",
        f"--adapter-name={SLOT}",
        "--num-requests=3",
        "--max-latency=30",
        f"--prompts-file={PROBES}",
        output_dir=out / "smoke",
    )
    assert smoke.code == 0, smoke.stderr + smoke.stdout
    staged = stack.run(
        "set-staged-alias",
        f"--model-name={MODEL}",
        "--source=alias:candidate",
        f"--slot-name={SLOT}",
        output_dir=out / "staged",
    )
    assert staged.code == 0, staged.stderr
    return {**versions, "out": str(out)}


def test_register_tags_and_reuse(stack: Stack, deployed: dict[str, str]) -> None:
    assert deployed["aws-rag-qa-v1"] != deployed["aws-rag-qa-v2"]
    # --reuse-identical found v1 instead of registering a third version.
    assert stack.versions(MODEL) == sorted([deployed["aws-rag-qa-v1"], deployed["aws-rag-qa-v2"]])
    result = json.loads((Path(deployed["out"]) / "aws-rag-qa-v1" / "result.json").read_text())
    assert result["details"]["rank"] == 16
    assert set(result["details"]["files"]) == {"adapter_config.json", "adapter_model.safetensors"}


def test_steps_1_to_3_deploy_and_stage(stack: Stack, deployed: dict[str, str]) -> None:
    v1 = deployed["aws-rag-qa-v1"]
    out = Path(deployed["out"])
    assert stack.aliases(MODEL) == {"candidate": v1, "staged": v1}
    root = stack.served()[SLOT]
    assert root == str(stack.info.adapters_root / SLOT / f"{MODEL}-v{v1}")
    assert sorted(p.name for p in Path(root).iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    load = json.loads((out / "load" / "result.json").read_text())
    assert load["status"] == "ok" and load["version"] == v1 and load["slot"] == SLOT
    assert (out / "load" / "version").read_text().strip() == v1
    assert set(load["timings_s"]) >= {"resolve", "download", "validate", "copy", "load", "verify"}
    smoke = json.loads((out / "smoke" / "result.json").read_text())
    assert smoke["status"] == "ok"
    assert len(smoke["details"]["latency_s"]["all"]) == 3
    assert all(answer["text"].strip() for answer in smoke["details"]["answers"])
    assert (out / "staged" / "version").read_text().strip() == v1


def test_adapter_changes_the_output(stack: Stack, deployed: dict[str, str]) -> None:
    """The served adapter is really active: greedy answers differ from the base model's."""
    import httpx

    prompt = json.loads(PROBES.read_text().splitlines()[0])["prompt"]

    def answer(model: str) -> str:
        body = {"model": model, "prompt": prompt, "max_tokens": 24, "temperature": 0}
        response = httpx.post(f"{stack.info.vllm_url}/v1/completions", json=body, timeout=60)
        response.raise_for_status()
        return str(response.json()["choices"][0]["text"])

    assert answer(SLOT) != answer(stack.info.served_model)


def test_second_version_swaps_into_a_new_folder(
    stack: Stack, deployed: dict[str, str], tmp_path: Path
) -> None:
    v1, v2 = deployed["aws-rag-qa-v1"], deployed["aws-rag-qa-v2"]
    old_root = stack.served()[SLOT]
    done = stack.run(
        "load-adapter",
        f"--model-name={MODEL}",
        f"--source=version:{v2}",
        f"--slot-name={SLOT}",
        output_dir=tmp_path,
    )
    assert done.code == 0, done.stderr
    assert stack.served()[SLOT].endswith(f"{MODEL}-v{v2}")
    assert Path(old_root).is_dir(), "the previous version's folder must never be removed under a name"
    # Loading the same version again is a no-op that still verifies.
    again = stack.run(
        "load-adapter",
        f"--model-name={MODEL}",
        f"--source=version:{v2}",
        f"--slot-name={SLOT}",
        output_dir=tmp_path / "again",
    )
    assert again.code == 0, again.stderr
    assert again.result is not None
    assert again.result["details"]["replicas"][0]["strategy"] == "none"
    # Put v1 back for the failure tests below.
    back = stack.run("load-adapter", f"--model-name={MODEL}", f"--source=version:{v1}", f"--slot-name={SLOT}")
    assert back.code == 0, back.stderr


FAILURES = [
    pytest.param(
        ["load-adapter", "--model-name=it-no-such-model", "--source=alias:candidate", f"--slot-name={SLOT}"],
        {},
        3,
        "it-no-such-model",
        id="unknown-model",
    ),
    pytest.param(
        ["load-adapter", f"--model-name={MODEL}", "--source=alias:no-such-alias", f"--slot-name={SLOT}"],
        {},
        3,
        "no-such-alias",
        id="unknown-alias",
    ),
    pytest.param(
        ["load-adapter", f"--model-name={MODEL}", "--source=version:999", f"--slot-name={SLOT}"],
        {},
        3,
        "999",
        id="unknown-version",
    ),
    pytest.param(
        ["load-adapter", f"--model-name={MODEL}", "--source=candidate", f"--slot-name={SLOT}"],
        {},
        2,
        "'candidate'",
        id="malformed-source",
    ),
    pytest.param(
        ["load-adapter", f"--model-name={MODEL}", "--source=alias:candidate", "--slot-name=../escape"],
        {},
        2,
        "../escape",
        id="slot-traversal",
    ),
    pytest.param(
        ["set-staged-alias", f"--model-name={MODEL}", "--source=alias:no-such-alias"],
        {},
        3,
        "no-such-alias",
        id="staged-unknown-alias",
    ),
    pytest.param(
        ["smoke-test", "--adapter-name=it-not-served", "--num-requests=1"],
        {},
        3,
        "it-not-served",
        id="smoke-unserved-adapter",
    ),
    pytest.param(
        ["register", f"--model-name={MODEL}", f"--adapter-dir={Path(__file__).parent}"],
        {},
        3,
        "adapter_config.json",
        id="register-not-an-adapter",
    ),
]


@pytest.mark.parametrize(("args", "env", "code", "named"), FAILURES)
def test_bad_input_changes_nothing(
    stack: Stack,
    deployed: dict[str, str],
    tmp_path: Path,
    args: list[str],
    env: dict[str, str],
    code: int,
    named: str,
) -> None:
    before = stack.snapshot(MODEL)
    done = stack.run(*args, output_dir=tmp_path, env=env)
    assert done.code == code, done.stderr
    assert len(done.error_lines) == 1, done.stderr
    assert named in done.error_lines[0] and "next:" in done.error_lines[0]
    assert stack.snapshot(MODEL) == before
    assert done.result is not None and done.result["status"] == "error"
    assert done.result["exit_code"] == code


def test_adapter_for_another_base_is_refused(stack: Stack, deployed: dict[str, str], tmp_path: Path) -> None:
    """A real adapter trained for the tiny Llama registers fine but never reaches vLLM."""
    other = "it-other-base"
    done = stack.run(
        "register",
        f"--model-name={other}",
        f"--adapter-dir={DEMO_ADAPTERS / 'tiny-llama-qa'}",
        "--alias=candidate",
    )
    assert done.code == 0, done.stderr
    before = stack.snapshot(other), stack.snapshot(MODEL)
    done = stack.run(
        "load-adapter",
        f"--model-name={other}",
        "--source=alias:candidate",
        f"--slot-name={SLOT}",
        output_dir=tmp_path,
    )
    assert done.code == 3, done.stderr
    assert len(done.error_lines) == 1
    assert "base_model_name_or_path" in done.error_lines[0]
    assert stack.info.served_model in done.error_lines[0]
    assert (stack.snapshot(other), stack.snapshot(MODEL)) == before
    assert not (stack.info.adapters_root / SLOT / f"{other}-v1").exists()


def test_vllm_unreachable_is_transient(stack: Stack, deployed: dict[str, str], closed_port_url: str) -> None:
    before = stack.snapshot(MODEL)
    done = stack.run(
        "load-adapter",
        f"--model-name={MODEL}",
        "--source=alias:candidate",
        f"--slot-name={SLOT}",
        f"--vllm-url={closed_port_url}",
    )
    assert done.code == 75, done.stderr
    assert closed_port_url in done.error_lines[0]
    assert stack.snapshot(MODEL) == before
    smoke = stack.run("smoke-test", f"--adapter-name={SLOT}", f"--vllm-url={closed_port_url}")
    assert smoke.code == 75


def test_mlflow_unreachable_is_transient(
    stack: Stack, deployed: dict[str, str], closed_port_url: str
) -> None:
    before = stack.snapshot(MODEL)
    for args in (
        ["load-adapter", f"--model-name={MODEL}", "--source=alias:candidate", f"--slot-name={SLOT}"],
        ["set-staged-alias", f"--model-name={MODEL}", "--source=alias:candidate"],
        ["register", f"--model-name={MODEL}", f"--adapter-dir={DEMO_ADAPTERS / 'aws-rag-qa-v2'}"],
    ):
        done = stack.run(*args, env={"MLFLOW_TRACKING_URI": closed_port_url})
        assert done.code == 75, (args, done.stderr)
        assert len(done.error_lines) == 1 and closed_port_url in done.error_lines[0]
    assert stack.snapshot(MODEL) == before
